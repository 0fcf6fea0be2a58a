"""The README's Python example runs as written (with fewer epochs) and prints what it claims."""
import re

from helpers import ROOT


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Usage\s+```python\n(.*?)```", text, re.S).group(1)
    assert "gn.MLP([784, 512, 256, 10]" in block and "net.save(" in block
    code = block.replace("epochs=10", "epochs=1").replace("CosineDecay(10,", "CosineDecay(1,")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (our own documentation)
    net, hist = scope["net"], scope["hist"]
    assert len(hist.history["val_accuracy"]) == 1 and hist.history["val_accuracy"][0] > 0.95
    assert (tmp_path / "mnist.npz").exists() and net.device == "cpu"
