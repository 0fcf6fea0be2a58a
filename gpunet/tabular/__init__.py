"""The user's tables: files read into named columns (:mod:`.files`), the schema and preprocessing stored in the
model (:mod:`.schema`), and the target, task, splits and standardisation (:mod:`.prepare`)."""
from gpunet.tabular.files import SUFFIXES, check_file, max_bytes, read, read_targets_npy
from gpunet.tabular.raw import RawTable
from gpunet.tabular.prepare import folds, infer_task, labels, split_indices, standardisation, target_column
from gpunet.tabular.schema import MAX_CATEGORIES, Schema, TableWarning, as_text, row_hashes

__all__ = ["SUFFIXES", "RawTable", "check_file", "max_bytes", "read", "read_targets_npy", "folds", "infer_task",
           "labels", "split_indices", "standardisation", "target_column", "MAX_CATEGORIES", "Schema", "TableWarning",
           "as_text", "row_hashes"]
