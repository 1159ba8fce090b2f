"""`prune --format gguf` and `export --to gguf` on the real SmolLM2 GGUF: the two paths agree
byte for byte, and bad requests are refused before any work."""

import json

import numpy as np
import pytest

from prunellm.cli import main
from prunellm.errors import PrunellmError
from prunellm.io import default_model_path

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def source() -> str:
    try:
        return str(default_model_path())
    except PrunellmError as error:
        pytest.skip(str(error))


def quick(data_dir, *extra: str) -> list[str]:
    """Two 64-token windows, first two blocks only: seconds, not minutes."""
    return ["--calib", str(data_dir / "wikitext-2-tokenized" / "valid.txt"), "--num-samples", "2", "--seqlen", "64",
            "--last-block", "1", "--quiet", "--no-layer-errors", *extra]


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _prune_to_gguf(source, data_dir, out) -> None:
    assert main(["prune", source, "--method", "sparsegpt", "--sparsity", "0.5", "--gguf-type", "q4_0",
                 "--format", "gguf", "--out", str(out), *quick(data_dir)]) == 0


def test_prune_to_gguf_writes_pruned_q4_0_layers_and_keeps_the_rest(source, data_dir, tmp_path) -> None:
    direct = tmp_path / "direct.gguf"
    _prune_to_gguf(source, data_dir, direct)
    report = json.loads((tmp_path / "direct.gguf.report.json").read_text())
    assert report["method"]["gguf"] == "q4_0" and len(report["layers"]) == 14
    written, original = tensors(direct), tensors(source)
    for name in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"]:
        assert written[name].tensor_type == gguf.GGMLQuantizationType.Q4_0
        values = gguf.quants.dequantize(written[name].data, written[name].tensor_type)
        assert 0.5 <= (values == 0).mean() < 0.53  # the pruned zeros survived the grid
    assert written["blk.2.ffn_down.weight"].tensor_type == original["blk.2.ffn_down.weight"].tensor_type


# Three loads of the real GGUF (about 55 s on 2 cores); the library-level round trip is in the
# default run (tests/io/test_gguf_export.py), and the test above runs the CLI path once.
@pytest.mark.slow
def test_prune_to_gguf_and_export_of_the_saved_directory_agree(source, data_dir, tmp_path, capsys) -> None:
    direct = tmp_path / "direct.gguf"
    _prune_to_gguf(source, data_dir, direct)
    saved = tmp_path / "pruned"
    assert main(["prune", source, "--method", "sparsegpt", "--sparsity", "0.5", "--gguf-type", "q4_0",
                 "--out", str(saved), *quick(data_dir)]) == 0
    assert (saved / "gguf_blocks.safetensors").is_file()
    exported = tmp_path / "exported.gguf"
    assert main(["export", str(saved), "--to", "gguf", "--type", "q4_0", "--out", str(exported)]) == 0
    assert "saved to" in capsys.readouterr().out

    a, b = tensors(direct), tensors(exported)
    for name in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.1.attn_v.weight"]:
        assert a[name].tensor_type == b[name].tensor_type == gguf.GGMLQuantizationType.Q4_0
        assert np.array_equal(np.asarray(a[name].data), np.asarray(b[name].data)), name


BAD = {
    "output that is not a .gguf": (["--method", "gptq", "--gguf-type", "q4_0", "--format", "gguf", "--out", "x.bin"],
                                   "--out must name a .gguf file"),
    "K-quant with pruning": (["--gguf-type", "q4_k_m", "--format", "gguf", "--out", "x.gguf"], "cannot keep"),
    "method that cannot quantize": (["--method", "noop", "--gguf-type", "q4_0"], "does not take gguf"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_gguf_requests_fail_in_one_line_and_write_nothing(source, data_dir, tmp_path, monkeypatch, capsys,
                                                              case) -> None:
    monkeypatch.chdir(tmp_path)
    extra, message = BAD[case]
    assert main(["prune", source, *extra, *quick(data_dir)]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_what_it_cannot_do(source, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(empty), "--type", "q4_0"]) != 0
    assert "does not say which GGUF file" in capsys.readouterr().err
    existing = tmp_path / "there.gguf"
    existing.write_text("")
    assert main(["export", str(empty), "--type", "q4_0", "--out", str(existing)]) != 0
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(empty), "--type", "q4_k_x", "--source", source]) != 0
    assert "unknown GGUF type" in capsys.readouterr().err
