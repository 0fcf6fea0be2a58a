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


def _github_anchors(markdown):
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to
    hyphens, "-1", "-2", ... for repeats)."""
    seen, anchors = {}, set()
    for line in re.sub(r"```.*?```", "", markdown, flags=re.S).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_relative_links_in_readme_and_docs_resolve():
    """Every relative link (and image) in README.md and docs/*.md names an existing file, and every
    #anchor an existing heading of its target."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1, "docs/*.md missing"
    broken, checked = [], 0
    for page in pages:
        text = page.read_text()
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
        for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _github_anchors(dest.read_text()):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert checked > 10, f"only {checked} relative links found: is the pattern broken?"
    assert not broken, "broken links:\n" + "\n".join(broken)
