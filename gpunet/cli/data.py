"""What a run trains and reports on: built-in datasets or the user's file, split, standardised, with the
network's widths checked against the data and the targets shaped for the loss."""
from __future__ import annotations

import hashlib

import numpy as np

import gpunet as gn
from gpunet import datasets, metrics, tabular
from gpunet.cli.config import CLIError


class Data:
    """Everything a run trains and reports on: splits, widths, classes and standardisation; for a --data file
    also its table, schema and the split's row indices (``rows``: train, validation, test)."""

    def __init__(self, train, val, test, n_features, n_outputs, classes=None, mean=None, scale=None,
                 val_label="validation", test_label="test", features=None, target=None):
        self.train, self.val, self.test = train, val, test
        self.n_features, self.n_outputs, self.classes = n_features, n_outputs, classes
        self.mean, self.scale = mean, scale
        self.val_label, self.test_label = val_label, test_label
        self.features, self.target = features, target
        self.schema = self.table = self.y = self.rows = None

def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def load_data(cfg, data_dir=None):
    """The run's :class:`Data` (host arrays) for a built-in dataset or a --data file."""

    name = cfg["dataset"]
    if cfg.get("data"):
        return load_table(cfg)
    if name == "mnist":
        train, test = datasets.load_mnist(data_dir)
        classes, n_in, n_out = np.arange(10), 784, 10
    elif name == "sincos01":  # seed 003: 300 fresh batches of 32 (one pass), tested on 500 other points
        train = datasets.sincos(cfg["batch_size"] * 300, 0.0, 1.0, seed=cfg["seed"])
        test = datasets.sincos(500, 0.0, 1.0, seed=cfg["seed"] + 1)
        classes, n_in, n_out = None, 1, 2
    else:
        make = datasets.sinc if name == "sinc" else datasets.sincos
        train, test = make(1000, seed=cfg["seed"]), make(500, seed=cfg["seed"] + 1)
        classes, n_in, n_out = None, 1, (1 if name == "sinc" else 2)
    val = None
    if cfg["validation_split"]:
        tr, va, _ = tabular.split_indices(len(train[0]), 0.0, cfg["validation_split"], cfg.get("split_seed", 0))
        train, val = (train[0][tr], train[1][tr]), (train[0][va], train[1][va])
    data = Data(train, val if val is not None else test, test, n_in, n_out, classes,
                val_label="validation" if val is not None else "test")
    data.builtin_classes = name == "mnist"  # MNIST's labels are the indices themselves: not stored in the model
    return data

def read_table(cfg):
    """The --data file as a :class:`gpunet.tabular.RawTable`, its target column read as text; notes printed."""
    target = cfg.get("target")
    path = cfg["data"]
    table = tabular.read(path, text_columns=[target if target is not None else -1])
    if path.lower().endswith(".npy") and target is not None and str(target).lower().endswith(".npy"):
        y = tabular.read_targets_npy(target)
        if len(y) != len(table):
            raise CLIError(f"{path} has {len(table)} rows but {target} has {len(y)}")
        table = table.drop("y")
        table.names.append("y")
        table.columns["y"] = tabular.as_text(y) if y.dtype.kind in "US" else (y[:, 0] if y.ndim == 2 and
                                                                                y.shape[1] == 1 else y)
        cfg["target"] = target = "y"
    elif path.lower().endswith((".npy", ".npz")) and target is None:
        if "y" not in table.columns:
            raise CLIError(f"{path}: no targets for this .npy file; give --target PATH.npy (or name the files X.npy, "
                           f"y.npy)")
        target = "y"
    for note in table.notes:
        print(f"gpunet: note: {note}")
    return table, tabular.target_column(table, target)


def _describe_target(y, classes, task, reason, cfg):
    other = "regress" if task == "classify" else "classify"
    head = f"gpunet: task {task} ({reason}; --task {other} to override)"
    if classes is not None:
        _, counts = np.unique(y, return_counts=True)
        shown = ", ".join(f"{c} {n}" for c, n in zip(classes.tolist()[:12], counts.tolist()))
        return f"{head}: {len(classes)} classes: {shown}" + (", ..." if len(classes) > 12 else "")
    v = np.asarray(y, dtype=np.float64)
    return f"{head}: target {cfg['target']!r} from {v.min():.4g} to {v.max():.4g} (mean {v.mean():.4g}, std {v.std():.4g})"


def load_table(cfg, quiet=False):
    """A --data file: read, target and task (printed), stratified split with --split-seed, the schema and its
    preprocessing fitted on the training split only, the standardisation of the network's inputs from it too."""
    table, target = read_table(cfg)
    cfg["target"] = target
    if cfg.get("task"):
        task, reason = cfg["task"], "--task"
    else:
        task, reason = tabular.infer_task(table.columns[target])
    cfg["task"] = task
    y, classes = tabular.labels(table, target, task)
    n_out = len(classes) if classes is not None else (1 if y.ndim == 1 else y.shape[1])
    if cfg["output_activation"] is None:
        cfg["output_activation"] = "softmax" if task == "classify" and cfg["loss"] in (None, "cross_entropy") \
            else ("sigmoid" if cfg["loss"] == "binary_cross_entropy" else "linear")
    if cfg["loss"] is None:
        cfg["loss"] = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}.get(cfg["output_activation"], "mse")
    seed = cfg.get("split_seed", 0)
    strata = y if classes is not None else None
    tr, va, te = tabular.split_indices(len(y), cfg.get("test_split") or 0.0, cfg["validation_split"], seed, strata)
    features = [n for n in table.names if n != target]
    if not features:
        raise CLIError(f"{cfg['data']} has no feature columns besides the target {target!r}")
    schema = tabular.Schema.fit(table, features, tr, target=target, impute=not cfg.get("no_impute"),
                                encode=not cfg.get("no_encode"),
                                max_categories=cfg.get("max_categories") or tabular.MAX_CATEGORIES,
                                categorical=cfg.get("categorical") or ())
    R = schema.codes(table.take(tr), "the training split")
    schema.remember_rows(R)
    mean, scale = tabular.standardisation(schema.expand(R, lambda a, dt: np.asarray(a, dtype=dt), "float64"))
    if not quiet:
        print(_describe_target(y[tr], classes, task, reason, cfg))
        print(f"gpunet: features: {schema.describe()}")
        print(f"gpunet: split: {len(tr)} train / {len(va)} validation / {len(te)} test rows"
              f"{' (stratified by class)' if strata is not None else ''}, --split-seed {seed}")
    split = lambda idx: (table.take(idx), y[idx]) if len(idx) else None  # noqa: E731
    test, val = split(te), split(va)
    test_label = "test"
    if test is None:  # no held-out test set: report on the validation set, else on the training data
        test, test_label = (val, "validation") if val is not None else (split(tr), "training")
    data = Data(split(tr), val, test, schema.width(), n_out, classes, mean, scale,
                "validation" if val is not None else None, test_label, features, target)
    data.schema, data.table, data.y, data.rows = schema, table, y, (tr, va, te)
    return data


def check_widths(cfg, data):
    """The network must take the data's features and give one output per class / target column."""
    if cfg.get("layers") is None:
        out = 1 if cfg["loss"] == "binary_cross_entropy" and data.classes is not None and len(data.classes) == 2 \
            else data.n_outputs
        cfg["layers"] = [data.n_features, *cfg["hidden"], out]
    cfg.pop("hidden", None)
    layers = cfg["layers"]
    name = cfg["dataset"]
    if layers[0] != data.n_features:
        raise CLIError(f"--layers starts with {layers[0]} inputs but the {name} data have {data.n_features} features")
    if data.classes is not None:
        k = len(data.classes)
        binary = cfg["loss"] == "binary_cross_entropy" and k == 2 and layers[-1] == 1
        if layers[-1] != k and not binary:
            shown = ", ".join(map(str, data.classes[:10])) + (", ..." if k > 10 else "")
            raise CLIError(f"--layers ends with {layers[-1]} outputs but the {name} data have {k} classes ({shown}): a "
                           f"classifier needs one output per class" + (" (or 1 sigmoid unit with binary_cross_entropy)"
                                                                       if k == 2 else ""))
    elif layers[-1] != data.n_outputs:
        raise CLIError(f"--layers ends with {layers[-1]} outputs but the {name} data have {data.n_outputs} target "
                       f"column(s)")

def targets(model, loss, y, labels):
    """Targets as ``fit`` takes them: labels for cross-entropy (and one sigmoid unit), one-hot rows for
    mse/mae/multi-unit binary cross-entropy on class labels (so ``--loss mse`` works on MNIST). ``labels`` says
    that ``y`` holds class labels (a classification run)."""
    if y is None or getattr(y, "ndim", 1) != 1 or not (labels or model.classes is not None):
        return y
    if loss == "cross_entropy" or model.layer_sizes[-1] == 1:
        return y
    idx = np.asarray(model.encode_labels(y))
    return np.eye(model.layer_sizes[-1])[idx.astype(np.int64)]

def make_model(cfg, data=None):

    model = gn.MLP(cfg["layers"], cfg["hidden_activation"], cfg["output_activation"], device=cfg["device"],
                   dtype=cfg["dtype"], seed=cfg["seed"], init=cfg["init"], l1=cfg["l1"], l2=cfg["l2"],
                   dropout=cfg["dropout"])
    return attach_data(model, data)

def attach_data(model, data, models=None):
    """The training data's input statistics and class labels, stored in the model (or every model of a stack, or
    the stack's models at the indices ``models``: a fold's seeds)."""
    if data is not None:
        classes = data.classes if data.classes is not None and not getattr(data, "builtin_classes", False) else None
        if hasattr(model, "set_preprocessing"):
            model.set_preprocessing(data.mean, data.scale, classes, models=models)
        else:
            model.input_mean, model.input_scale = data.mean, data.scale
            if classes is not None:
                model.classes = classes
            model.schema = getattr(data, "schema", None)
    return model

def score_report(model, X, y):
    """The metrics of ``model`` on ``(X, y)`` for metrics.json and the summary (:mod:`gpunet.metrics`)."""
    if model.classes is not None and getattr(y, "ndim", 1) == 1:
        idx = model.encode_labels(y)
        return metrics.classification_report(idx, model.predict_proba(X), model.classes.tolist())
    if model.output_activation in ("softmax", "sigmoid"):
        return {}
    return metrics.regression_report(y, model.predict(X))


def _encoded(cfg, data, train, val, test):
    """A view of a --data run for compare: the schema and standardisation fitted on ``train`` rows only, the rows
    of each part encoded by it into numeric arrays (as the model's door would encode them)."""
    schema = tabular.Schema.fit(data.table, data.features, train, target=data.target,
                                impute=not cfg.get("no_impute"), encode=not cfg.get("no_encode"),
                                max_categories=cfg.get("max_categories") or tabular.MAX_CATEGORIES,
                                categorical=cfg.get("categorical") or ())
    host = lambda a, dt: np.asarray(a, dtype=dt)  # noqa: E731
    part = lambda rows: (schema.expand(schema.codes(data.table.take(rows), "the table"), host, "float64"),  # noqa: E731
                         data.y[rows])
    tr, va, te = part(train), part(val), part(test) if len(test) else None
    mean, scale = tabular.standardisation(tr[0])
    view = Data(tr, va, te if te is not None else va, schema.width(), data.n_outputs, data.classes, mean, scale,
                "validation", "test" if te is not None else "validation", schema.input_names(), data.target)
    return view


def validation_view(cfg, data):
    """compare without --folds: the run's validation split (carved from the training data)."""
    if data.table is not None:
        tr, va, te = data.rows
        return _encoded(cfg, data, tr, va, te)
    return data


def fold_views(cfg, data, k):
    """compare --folds K: K views whose validation parts are the folds of the rows outside the test split
    (stratified for classes, seeded by --split-seed); each fits its own preprocessing on its training part."""
    seed = cfg.get("split_seed", 0)
    if data.table is not None:
        tr, va, te = data.rows
        pool = np.concatenate([tr, va])
        strata = data.y[pool] if data.classes is not None else None
        return [_encoded(cfg, data, a, b, te) for a, b in tabular.folds(pool, k, seed, strata)]
    X, y = data.train
    strata = y if data.classes is not None and np.asarray(y).ndim == 1 else None
    views = []
    for a, b in tabular.folds(np.arange(len(X)), k, seed, strata):
        view = Data((X[a], y[a]), (X[b], y[b]), data.test, data.n_features, data.n_outputs, data.classes,
                    data.mean, data.scale, "validation", data.test_label)
        view.builtin_classes = getattr(data, "builtin_classes", False)
        views.append(view)
    return views
