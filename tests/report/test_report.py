"""`prunellm report`: a sweep and a single prune run rendered as self-contained HTML and Markdown."""

import base64
import io
import json
import re
from html.parser import HTMLParser

from PIL import Image

from prunellm.cli import main
from prunellm.report import write_report
from prunellm.sweep.results import load_results
from tests.model_dirs import make_workspace


class PageParser(HTMLParser):
    """Collects what a reader sees: table captions and cells, image sources, and any reference to
    another resource."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.captions: list[str] = []
        self.images: list[str] = []
        self.references: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("href", "src"):
            if name in attrs and not attrs[name].startswith("data:"):
                self.references.append(attrs[name])
        if tag in ("td", "th", "caption"):
            self._in = tag
            (self.captions if tag == "caption" else self.cells).append("")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "caption":
            self.captions[-1] += data
        elif self._in in ("td", "th"):
            self.cells[-1] += data


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def test_sweep_report_is_self_contained_with_tables_and_figures(sweep_dir, tmp_path, capsys):
    assert main(["report", str(sweep_dir), "--out", str(tmp_path)]) == 0
    assert "3 figures" in capsys.readouterr().out
    html = (tmp_path / "report.html").read_text()
    page = parse(html)
    assert page.references == []  # nothing to fetch: works offline
    assert not re.search(r"https?://", html)
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert image.width > 300 and image.height > 200
    results = json.loads((sweep_dir / "results.json").read_text())
    for row in results["rows"]:  # every setting, with its perplexity to two decimals
        assert row["label"] in page.cells
        ppl = next(iter(row["perplexity"].values()))
        assert f"{ppl:.2f}" in page.cells
    assert any(caption.startswith("Perplexity on calib.txt") for caption in page.captions)
    assert any(caption.startswith("prunellm_basics: acc over 40 items") for caption in page.captions)
    assert any("Mean relative error" in caption for caption in page.captions)
    for name in ("model", "calibration", "perplexity on", "versions"):
        assert name in page.cells

    markdown = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == ["plots/perplexity.png", "plots/accuracy.png", "plots/layer_errors.png"]
    assert all((tmp_path / link).is_file() for link in links)
    assert "| sparsity | magnitude | wanda | sparsegpt |" in markdown
    assert sum(line.startswith("| 2:4 |") for line in markdown.splitlines()) == 3  # perplexity, accuracy, layer error


def test_best_method_per_sparsity_is_bold(sweep_dir, tmp_path):
    files = write_report(sweep_dir, tmp_path)
    results = json.loads((sweep_dir / "results.json").read_text())
    by_key = {r["key"]: r for r in results["rows"]}
    markdown = files.markdown.read_text()
    for pattern in ("40", "70", "2-4"):
        ppl = {m: next(iter(by_key[f"{m}_{pattern}"]["perplexity"].values()))
               for m in ("magnitude", "wanda", "sparsegpt")}
        best = min(ppl.values())
        assert f"**{best:.2f}**" in markdown


def test_sweep_report_says_when_the_last_setting_was_saved(sweep_dir, tmp_path):
    # A resumed sweep spans sessions: the subtitle names the last save, not the first.
    results = load_results(sweep_dir)
    results.created = "2000-01-01T00:00:00+00:00"  # as if started long ago
    results.save(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["updated"] > saved["created"]
    markdown = write_report(tmp_path, tmp_path / "report").markdown.read_text()
    assert f"updated {saved['updated']}" in markdown


def test_report_of_a_prune_run(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    out = tmp_path / "pruned"
    assert main(["prune", ws["model"], "--calib", ws["text"], "--num-samples", "4", "--seqlen", "32", "--eval",
                 ws["text"], "--allocation", "owl", "--sparsity", "0.6", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    page = parse((out / "report.html").read_text())
    report = json.loads((out / "report.json").read_text())
    assert len(page.images) == 2  # error heatmap, and sparsity (OWL varies it by block)
    assert all(layer["name"] in page.cells for layer in report["layers"])
    assert "sparsegpt" in page.cells and "change" in page.cells
    assert (out / "report.md").read_text().count("![") == 2


def test_report_of_something_else_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"hello": 1}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "neither a prunellm sweep" in err and len(err.splitlines()) == 1
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
