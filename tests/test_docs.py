"""The README and docs/ pages: their code runs, their links resolve, and the
README's test commands are the ones CI runs."""

import glob
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
REFERENCE_FILE = re.compile(r"""["'](\.\./shared/reference/[^"']+)["']""")


def _read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def _blocks(text, language):
    """The fenced blocks of one language, as written."""
    return [b.split("```", 1)[0] for b in text.split(f"```{language}\n")[1:]]


def _anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as '-'."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _steps(command_lines):
    """Shell steps of `a && b` lines, each as its list of words."""
    return [shlex.split(step) for line in command_lines for step in line.split("&&")]


def test_every_docs_page_is_in_the_readme_contents():
    readme_links = {link.split("#")[0] for link in LINK.findall(FENCE.sub("", _read("README.md")))}
    for page in PAGES[1:]:
        assert page in readme_links, f"{page} is not in the README's table of contents"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    """Every relative link (and image) points at a file that exists, and an
    anchor at a heading of that file."""
    text = _read(page)
    base = os.path.dirname(os.path.join(ROOT, page))
    broken = []
    for link in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(base, path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(target):
            broken.append(f"{link} (no file {os.path.relpath(target, ROOT)})")
        elif anchor and target.endswith(".md"):
            with open(target, encoding="utf-8") as f:
                if anchor not in _anchors(f.read()):
                    broken.append(f"{link} (no heading #{anchor})")
    assert not broken, f"broken links in {page}: {broken}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if "```python\n" in _read(p)])
def test_python_blocks_run(page, monkeypatch):
    """Every ```python block of the page runs as written (from the repo root).

    A block that reads the authors' vectors (beside the repository, as
    conftest's `reference_dir`) is skipped when they are absent, after the
    page's other blocks ran; with KERAS_SEPVIT_REQUIRE_REFERENCE set it fails.
    """
    blocks = _blocks(_read(page), "python")
    assert blocks
    monkeypatch.chdir(ROOT)
    missing = []
    for block in blocks:
        absent = [p for p in REFERENCE_FILE.findall(block) if not os.path.exists(p)]
        if absent:
            missing += absent
            continue
        exec(compile(block, page, "exec"), {})
    if missing:
        message = f"reference files not found, their blocks in {page} not run: {missing}"
        if os.environ.get("KERAS_SEPVIT_REQUIRE_REFERENCE"):
            pytest.fail(message)
        pytest.skip(message)


def test_readme_test_commands_are_the_ci_commands():
    """The README's default tier sets up as CI does, and its full-suite command
    is the pytest that CI runs (reporting options such as --durations aside)."""
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        script = f.read().replace("\\\n", " ")
    ci_lines = [
        line.split(" #", 1)[0].strip()
        for line in script.splitlines()
        if line.strip() and not re.match(r"\s*(#|set |cd |export )", line)
    ]
    ci = _steps(ci_lines)
    ci_pytest = [s for s in ci if s[0] == "pytest"]
    assert len(ci_pytest) == 1, f".ci/run should run pytest once; it runs {ci_pytest}"
    ci_setup = [s for s in ci if s[0] != "pytest"]

    commands = [
        line.strip()
        for block in _blocks(_read("README.md"), "bash")
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    default = [line for line in commands if 'pip install -e ".[test]"' in line]
    assert len(default) == 1, f"the README should show one test set-up command: {default}"
    readme = _steps(default)
    assert readme[:-1] == ci_setup, f"README: {default[0]}\n.ci/run: {ci_lines}"

    full, args = [], iter(ci_pytest[0])
    for arg in args:
        if arg == "--durations":
            next(args, None)
        elif not arg.startswith("--durations="):
            full.append(arg)
    # The default tier is CI's pytest (its processes too) without --full.
    fast = [arg for arg in full if arg != "--full"]
    assert readme[-1] == fast, f"the default tier is {' '.join(fast)}: {default[0]}"
    assert " ".join(full) in commands, f"the README should show {' '.join(full)!r}"
    assert "--full" in full, f".ci/run should run every tier: {ci_pytest[0]}"
