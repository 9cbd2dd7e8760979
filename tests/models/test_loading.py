"""Loading: option parsing with clear errors, xdist GPU assignment, the weights hash, identity of a loaded model,
disk offload through --ladder-max-memory, and the preflight through an offloaded layer."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pytest_ladder.models.loading import (TOKENIZER_PROBE, ModelLoadError, ModelSpec, load_model, parse_device,
                                          parse_dtype, parse_max_memory, weights_sha256, worker_device,
                                          worker_max_memory)
from pytest_ladder.models.preflight import PreflightError, offloaded_layers, preflight

GIB = 2**30


def test_parse_max_memory():
    assert parse_max_memory("cuda:0=8GiB,cpu=32GiB") == {0: 8 * GIB, "cpu": 32 * GIB}
    assert parse_max_memory(" cuda:1 = 500MiB , 0=2GB, cpu=1024") == {1: 500 * 2**20, 0: 2 * 10**9, "cpu": 1024}
    for bad, fragment in (("cuda:0:8GiB", "is not DEVICE=SIZE"), ("tpu=8GiB", "unknown device 'tpu'"),
                          ("cuda:0=8XB", "'8XB' is not a size"), ("", "is empty")):
        with pytest.raises(ValueError) as error:
            parse_max_memory(bad)
        assert "--ladder-max-memory" in str(error.value) and fragment in str(error.value)
        assert "e.g. --ladder-max-memory cuda:0=8GiB,cpu=32GiB" in str(error.value)


def test_parse_device_and_dtype():
    assert [parse_device(d) for d in ("cpu", "CUDA", "cuda:3", "mps")] == ["cpu", "cuda", "cuda:3", "mps"]
    with pytest.raises(ValueError, match=r"--ladder-device 'gpu0': expected cpu, cuda or cuda:N"):
        parse_device("gpu0")
    assert [parse_dtype(d) for d in ("auto", "bf16", "float32", "fp16")] == ["auto", "bfloat16", "float32",
                                                                             "float16"]
    with pytest.raises(ValueError, match="--ladder-dtype 'int8': expected one of auto, float32, bfloat16, float16"):
        parse_dtype("int8")


def test_each_xdist_worker_takes_its_own_gpu():
    assert [worker_device("cuda", f"gw{i}", 4) for i in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3",
                                                                     "cuda:0", "cuda:1"]
    assert worker_device("cuda", "gw3", 1) == "cuda"
    assert worker_device("cuda:1", "gw3", 4) == "cuda:1"  # explicit index kept
    assert worker_device("cuda", None, 4) == "cuda" and worker_device("cpu", "gw1", 4) == "cpu"
    assert worker_max_memory({0: 8, "cpu": 32}, "cuda:2") == {"cpu": 32, 2: 8}
    assert worker_max_memory({0: 8, 1: 8, "cpu": 32}, "cuda:1") == {0: 8, 1: 8, "cpu": 32}
    assert worker_max_memory(None, "cuda:1") is None


def test_weights_sha256_hashes_the_files_once(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"first shard")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"second")
    shards = {n: hashlib.sha256(c).hexdigest() for n, c in (("model-00001-of-00002.safetensors", b"first shard"),
                                                               ("model-00002-of-00002.safetensors", b"second"))}
    expected = hashlib.sha256("".join(f"{n} {h}\n" for n, h in sorted(shards.items())).encode()).hexdigest()
    assert weights_sha256(tmp_path) == (expected, shards)
    cache = json.loads((tmp_path / ".ladder-sha256.json").read_text())
    assert {n: e["sha256"] for n, e in cache.items()} == shards
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"changed!")  # size differs: hashed again
    assert weights_sha256(tmp_path)[1]["model-00002-of-00002.safetensors"] == hashlib.sha256(b"changed!").hexdigest()
    with pytest.raises(ModelLoadError, match="holds no \\*.safetensors file"):
        weights_sha256(tmp_path / "..")


def test_load_a_local_folder_with_its_identity(tiny_folder):
    loaded = load_model(ModelSpec(source=str(tiny_folder)))
    identity = loaded.identity
    assert identity["weights_sha256"] == weights_sha256(tiny_folder)[0] and identity["revision"] is None
    assert identity["name"] == tiny_folder.name and identity["source"] == str(tiny_folder.resolve())
    assert identity["dtype"] == "float32" and identity["device_map"] == {"cpu": 1}
    assert identity["n_params"] == sum(p.numel() for p in loaded.model.parameters())
    assert identity["architecture"] == "OLMoE" and identity["max_length"] == 64
    assert identity["config"] == {"model_type": "olmoe", "num_hidden_layers": 4, "hidden_size": 32, "num_experts": 8,
                                  "num_experts_per_tok": 2, "intermediate_size": 16, "moe_layers": [0, 1, 2, 3],
                                  "vocab_size": 320, "norm_topk_prob": False}
    assert not loaded.offloaded and loaded.prefix_token_id == 0
    bf16 = load_model(ModelSpec(source=str(tiny_folder), dtype="bfloat16"))
    assert bf16.identity["dtype"] == "bfloat16" and bf16.model.dtype == torch.bfloat16


def test_a_folder_without_a_tokenizer_or_with_another_models_is_a_clear_error(tiny_folder, tmp_path):
    """transformers gives a folder without tokenizer files an empty tokenizer (no word in it): the load stops there,
    naming the folder and the fix, not rungs later at corpora of zero tokens; a tokenizer whose ids run past the
    model's vocabulary is refused the same way, and so are weights whose shapes config.json denies."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_folder, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    with pytest.raises(ModelLoadError, match=f"--ladder-model '{bare}': the tokenizer read from {bare} encodes text "
                                             "to no tokens .*tokenizer files there: none.*tokenizer.save_pretrained"):
        load_model(ModelSpec(source=str(bare)))
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[UNK]": 0, **{w: 1000 + i for i, w in enumerate(TOKENIZER_PROBE.split())}}  # ids 1000.. > 320
    word_level = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = tmp_path / "other"
    shutil.copytree(tiny_folder, other, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]").save_pretrained(other)
    last = 1000 + len(TOKENIZER_PROBE.split()) - 1
    with pytest.raises(ModelLoadError, match=f"gives id {last}, past the model's vocabulary of 320 .*tokenizer files: "
                                             "tokenizer.json, tokenizer_config.json"):
        load_model(ModelSpec(source=str(other)))
    resized = tmp_path / "resized"  # config.json says 317 words, the weights hold 320: transformers refuses
    shutil.copytree(tiny_folder, resized)
    config = json.loads((resized / "config.json").read_text())
    (resized / "config.json").write_text(json.dumps({**config, "vocab_size": 317}))
    with pytest.raises(ModelLoadError, match=f"--ladder-model '{resized}': loading {resized} failed: .*mismatched"):
        load_model(ModelSpec(source=str(resized)))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="--ladder-model '/nonexistent/model': not a model folder"):
        load_model(ModelSpec(source="/nonexistent/model"))


@pytest.fixture(scope="module")
def offloaded(tiny_folder, tmp_path_factory):
    """--ladder-max-memory cpu=… below the model's size: accelerate puts the last layers on disk."""
    spec = ModelSpec(source=str(tiny_folder), max_memory=parse_max_memory("cpu=120KiB"),
                     offload_dir=str(tmp_path_factory.mktemp("offload")))
    return load_model(spec)


def test_max_memory_offloads_to_disk(offloaded, tiny_folder):
    assert offloaded.offloaded and "disk" in offloaded.identity["device_map"]
    assert offloaded.identity["weights_sha256"] == weights_sha256(tiny_folder)[0]
    assert offloaded.identity["max_memory"] == {"cpu": 120 * 2**10}
    memory = load_model(ModelSpec(source=str(tiny_folder)))
    ids = torch.tensor([[0, 4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        assert torch.equal(offloaded.model(input_ids=ids).logits, memory.model(input_ids=ids).logits)


def test_offload_maps_hold_the_patches_of_disk_offloaded_parameters(offloaded):
    """Disk-offloaded values stay in their files: the one in-memory map behind the hooks holds only what is patched,
    for as long as the patch lasts."""
    from pytest_ladder.models.weights import offload_maps, patched_parameters, pin_offloaded, read_parameter

    (overrides,) = offload_maps(offloaded.model)
    before = dict(overrides)
    name = f"model.layers.{offloaded.model.config.num_hidden_layers - 1}.mlp.experts.down_proj"
    assert name not in overrides
    zeros = torch.zeros_like(read_parameter(offloaded.model, name))
    with patched_parameters(offloaded.model, {name: zeros}):
        assert offload_maps(offloaded.model) == [overrides] and torch.equal(overrides[name], zeros)
        assert pin_offloaded(offloaded.model) == 0  # on a GPU the patch is page-locked as it is installed
        assert overrides[name].is_pinned() == torch.cuda.is_available()
    assert overrides == before


def test_preflight_touches_an_offloaded_layer(offloaded):
    layers = offloaded_layers(offloaded)
    assert layers and layers == sorted(layers)
    report = preflight(offloaded)
    assert report.layer == layers[0] and report.storage == "offload:disk"
    assert report.parameter == f"model.layers.{layers[0]}.mlp.gate.weight" and report.checked_against_checkpoint


def test_preflight_fails_fast_on_a_broken_offload(tiny_folder, tmp_path):
    offload = tmp_path / "offload"
    loaded = load_model(ModelSpec(source=str(tiny_folder), max_memory=parse_max_memory("cpu=120KiB"),
                                  offload_dir=str(offload)))
    layer = offloaded_layers(loaded)[0]
    for file in offload.glob(f"model.layers.{layer}.*"):
        file.unlink()  # the fused experts of that layer are gone from the offload folder
    with pytest.raises(PreflightError) as error:
        preflight(loaded)
    message = str(error.value)
    assert f"layer {layer} (model.layers.{layer}, offloaded)" in message
    assert "dense-only forward" in message and "--ladder-offload-dir" in message


def test_preflight_on_an_in_memory_model(tiny_folder):
    report = preflight(load_model(ModelSpec(source=str(tiny_folder))))
    assert (report.layer, report.storage, report.offloaded_layers) == (3, "memory", [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_offload_behind_a_gpu_is_page_locked_and_exact(tiny_folder, tmp_path):
    """Behind a GPU the offloaded layers' CPU values are page-locked (their copies onto the GPU run at the link's
    speed), equal bit for bit to the in-memory load, and a patch of an offloaded parameter is page-locked too."""
    from pytest_ladder.models.loading import weight_bytes
    from pytest_ladder.models.weights import (_override_dict, locate, offload_maps, patched_parameters,
                                              read_parameter)

    cap = weight_bytes(tiny_folder, "auto") // 2
    offloaded = load_model(ModelSpec(source=str(tiny_folder), device="cuda",
                                     max_memory={0: cap, "cpu": 10 * GIB}, offload_dir=str(tmp_path)))
    assert offloaded.identity["device_map"].get("cpu") and not offloaded.identity["device_map"].get("disk")
    last = f"model.layers.{offloaded.model.config.num_hidden_layers - 1}.mlp.experts.down_proj"
    located = locate(offloaded.model, last)
    (stored,) = offload_maps(offloaded.model)
    assert located.offloaded and stored is _override_dict(located.loader)
    assert last in stored and all(value.is_pinned() for value in stored.values())
    in_memory = load_model(ModelSpec(source=str(tiny_folder), device="cuda"))
    reference = in_memory.model.state_dict()
    assert all(torch.equal(value, reference[name].cpu()) for name, value in stored.items())
    ids = torch.tensor([[0, 4, 8, 15, 16, 23, 42]], device="cuda")
    with torch.no_grad():
        assert torch.equal(offloaded.model(input_ids=ids).logits, in_memory.model(input_ids=ids).logits)
        original = read_parameter(offloaded.model, last)
        with patched_parameters(offloaded.model, {last: torch.zeros_like(original, device="cuda")}):
            patch = _override_dict(located.loader)[located.key]
            assert patch.is_pinned() and not patch.any()
        assert read_parameter(offloaded.model, last) is original
