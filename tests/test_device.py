"""Device handling, the bounded scan cache, reading ahead, and GPU runs (skipped without a GPU)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import torch

from fedqc.config import ConfigError, DataConfig, ModelSpec
from fedqc.data.cache import ScanCache
from fedqc.data.images import decode
from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.models.state import initial_state
from fedqc.protocol import EvalRequest, TrainReply, TrainRequest
from fedqc.site import Site
from fedqc.site.device import resolve
from fedqc.site.loading import prefetch
from fedqc.transport.flower.codec import decode_train_reply, encode_train_reply
from fedqc.transport.flower.simulation import gpus_per_site
from tests.conftest import tiny_config

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
SPEC = ModelSpec(width=0.25, input_shape=(16, 16, 16))


def _paths(tiny_cohort, n):
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    return [str(p) for p in table["path"][:n]]


DECODED: list[str] = []


def counting_decode(path, shape, stamp=None):
    """:func:`decode`, recording each call (a module-level function: the folder tier names its entries after it)."""
    DECODED.append(path)
    return decode(path, shape, stamp)


class Counting:
    """Counts the decodes since it was made."""

    def __init__(self):
        self.start = len(DECODED)

    @property
    def calls(self) -> int:
        return len(DECODED) - self.start


def test_cache_holds_no_more_than_its_bound(tiny_cohort):
    paths = _paths(tiny_cohort, 12)
    one = decode(paths[0], (16, 16, 16)).nbytes
    counting = Counting()
    cache = ScanCache(counting_decode, max_bytes=5 * one)
    for p in paths:  # more scans than fit
        cache.get(p, (16, 16, 16))
        assert cache.nbytes <= 5 * one
    assert len(cache.memory) == 5 and counting.calls == 12
    for p in paths[-5:]:  # the five most recent are held: no decoding
        cache.get(p, (16, 16, 16))
    assert counting.calls == 12
    cache.get(paths[0], (16, 16, 16))  # the oldest left first
    assert counting.calls == 13


def test_cache_decodes_each_scan_once_when_it_fits(tiny_cohort):
    paths = _paths(tiny_cohort, 6)
    counting = Counting()
    cache = ScanCache(counting_decode, max_bytes=10**9)
    for _ in range(3):
        arrays = [cache.get(p, (16, 16, 16)) for p in paths]
    assert counting.calls == 6
    assert all(not a.flags.writeable for a in arrays)
    assert ScanCache(counting_decode, max_bytes=0).get(paths[0], (16, 16, 16)).shape == (1, 16, 16, 16)  # 0: off


def test_cache_folder_keeps_decoded_scans_across_processes(tiny_cohort, tmp_path):
    src = _paths(tiny_cohort, 1)[0]
    path = str(tmp_path / os.path.basename(src))
    shutil.copy(src, path)
    first = Counting()
    a = ScanCache(counting_decode, max_bytes=0, folder=tmp_path / "cache").get(path, (16, 16, 16))
    second = Counting()  # a new process: nothing in memory, the folder has it
    b = ScanCache(counting_decode, max_bytes=0, folder=tmp_path / "cache").get(path, (16, 16, 16))
    assert first.calls == 1 and second.calls == 0
    np.testing.assert_array_equal(a, b)
    time.sleep(0.01)
    shutil.copy(_paths(tiny_cohort, 2)[1], path)  # the file rewritten: decoded again
    c = ScanCache(counting_decode, max_bytes=0, folder=tmp_path / "cache").get(path, (16, 16, 16))
    assert second.calls == 1 and not np.array_equal(b, c)


def test_prefetch_keeps_order_and_raises_where_the_result_is_taken():
    def load(i):
        if i == 3:
            raise ValueError("bad batch 3")
        time.sleep(0.01)
        return i

    for depth in (0, 1, 3):
        got = []
        with pytest.raises(ValueError, match="bad batch 3"):
            for value, waited in prefetch((lambda i=i: load(i) for i in range(6)), depth):
                got.append(value)
                assert waited >= 0
        assert got == [0, 1, 2]
    assert [v for v, _ in prefetch((lambda i=i: i for i in range(5)), 2)] == [0, 1, 2, 3, 4]


def test_reading_ahead_trains_the_same_weights(tiny_cohort):
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    rows = table[table["site"] == "alpha"]
    state = initial_state(SPEC, 0)
    replies = [Site("alpha", rows, model=SPEC, data=DataConfig(prefetch=depth)).train(
        state, TrainRequest(lr=1e-3, batch_size=2, seed=4)) for depth in (0, 2)]
    assert replies[0].n_scans == replies[1].n_scans > 0
    assert 0 <= replies[1].data_wait_s <= replies[1].seconds
    for key in state:
        np.testing.assert_array_equal(replies[0].state[key], replies[1].state[key], err_msg=key)


def test_data_wait_crosses_the_wire():
    reply = TrainReply({"w": np.zeros(2, np.float32)}, 3, 0.5, 2.0, ["a"], data_wait_s=0.25)
    assert decode_train_reply(encode_train_reply(reply)).data_wait_s == 0.25


def test_device_choice(tiny_cohort):
    assert resolve("cpu").type == "cpu"
    assert resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sees no GPU"):
            resolve("cuda:0")
    cfg = tiny_config(tiny_cohort / "manifest.csv", device="cpu")
    assert gpus_per_site(cfg) == 0.0
    assert gpus_per_site(tiny_config(tiny_cohort / "manifest.csv", gpus_per_site=0.5)) == 0.5
    for key, value, message in [("device", "gpu", "device: 'gpu' is not one of"),
                                ("device", "cuda:x", "is not one of"),
                                ("gpus_per_site", -1, "gpus_per_site: must be >= 0"),
                                ("data", {"cache_gb": -1}, "data.cache_gb: must be >= 0"),
                                ("data", {"prefetch": -2}, "data.prefetch: must be >= 0"),
                                ("data", {"device_cache_gb": -0.5}, "data.device_cache_gb: must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            tiny_config(tiny_cohort / "manifest.csv", **{key: value})


@GPU
def test_gpu_trains_and_evaluates_and_returns_cpu_arrays(tiny_cohort):
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    rows = table[table["site"] == "alpha"]
    state = initial_state(SPEC, 0)
    gpu = Site("alpha", rows, model=SPEC, device="cuda")
    reply = gpu.train(state, TrainRequest(lr=1e-3, batch_size=2, seed=4))
    assert np.isfinite(reply.loss) and all(isinstance(v, np.ndarray) for v in reply.state.values())
    cpu = Site("alpha", rows, model=SPEC).train(state, TrainRequest(lr=1e-3, batch_size=2, seed=4))
    assert abs(reply.loss - cpu.loss) < 0.05  # bf16 autocast: close, not equal
    scores = gpu.evaluate(reply.state, EvalRequest("val")).scores["score"]
    assert len(scores) and scores.between(0, 1).all()
    assert gpu.scans.kept.currsize > 0  # the site's scans stay on the GPU


@GPU
def test_gpu_scan_cache_is_bounded(tiny_cohort):
    table = load_manifest(tiny_cohort / "manifest.csv", check_images=False)
    one = 16**3 * 4
    site = Site("alpha", table[table["site"] == "alpha"], model=SPEC, device="cuda",
                data=DataConfig(device_cache_gb=3 * one / 1024**3))
    site.evaluate(initial_state(SPEC, 0), EvalRequest("train"))
    assert site.scans.kept.currsize <= 3 * one and len(site.scans.kept) == 3


def test_site_settings_cross_the_wire(tiny_cohort):
    from fedqc.transport.flower.codec import site_config, site_options_from_config, to_config

    for data in ({}, {"cache_gb": 1.5, "cache_dir": "/tmp/x", "prefetch": 0, "device_cache_gb": 0}):
        cfg = tiny_config(tiny_cohort / "manifest.csv", device="cpu", deterministic=True, data=data)
        options = site_options_from_config(dict(to_config(site_config(cfg))))
        assert options == {"device": "cpu", "data": cfg.data, "deterministic": True}


def test_state_crosses_packed_in_one_array_exactly():
    from fedqc.transport.flower.codec import PACKED, packed_layout, record_to_state, state_to_record

    state = {"w": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
             "steps": np.array(7, dtype=np.int64), "mask": np.array([True, False]),
             "t": np.arange(6, dtype=np.float64).reshape(2, 3).T}  # not C-contiguous
    record = state_to_record(state)
    assert list(record) == ["state"] and record["state"].stype == PACKED
    assert packed_layout(record["state"].data) == [(k, v.dtype.str, v.shape) for k, v in state.items()]
    back = record_to_state(record)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value)
        assert back[key].flags.writeable


def test_flower_engine_sweep_replaced_on_the_pinned_version():
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api

    from fedqc.transport.flower.fast import vce

    assert vce.install() is (flwr.__version__ == "1.41.0")
    assert (vce_api.add_messages_to_queue is vce.add_messages_to_queue) is (flwr.__version__ == "1.41.0")
