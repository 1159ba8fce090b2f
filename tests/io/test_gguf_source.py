"""io/gguf_source.shared_reads: one parse of a GGUF file's metadata and one tensor-name map per
architecture within it, gguf's own functions back outside it."""

import gguf
import numpy as np

from prunellm.io.gguf_source import shared_reads


def _small_gguf(path):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_within_it_a_file_is_parsed_once_and_outside_as_before(tmp_path):
    path = _small_gguf(tmp_path / "small.gguf")
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with shared_reads():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # the same file by another spelling: the same parse
        assert [t.name for t in first.tensors] == ["token_embd.weight"]
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        with shared_reads():  # nested: the outer one's readers
            assert gguf.GGUFReader(path) is first
        assert gguf.GGUFReader(path) is first
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(path) is not first
