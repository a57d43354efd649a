"""No image data leaves a site: every message a site sends in a Flower simulation is checked; a loopback
deployment's replies are checked with :func:`check_replies` in tests/test_deployment.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from fedqc.config import ExperimentConfig
from fedqc.data.manifest import load_manifest
from fedqc.models import encode, network
from fedqc.models.state import initial_state
from fedqc.transport.flower.grid import describe_reply
from tests.conftest import tiny_config

ALLOWED_METRICS = {"n_scans", "steps", "loss", "seconds", "data_wait_s", "n", "tp", "fp", "tn", "fn", "loss_sum", "brier_sum",
                   "score", "label", "age", "val", "test", "train_positives", "ood", "feat_n", "feat_sum", "feat_sq",
                   "bn_n", "bn_sum", "bn_sq"}
# sums over a site's scans, one value per activation (per BatchNorm layer or channel): never per scan
MOMENTS = {"feat_n", "feat_sum", "feat_sq"}
BN_MOMENTS = {"bn_n", "bn_sum", "bn_sq"}


class Recorder:
    """A Flower mod that appends a description of every reply a site sends to a file."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(describe_reply(reply)) + "\n")
        return reply


def check_replies(records: list[dict], cfg: ExperimentConfig, largest_site: int) -> None:
    """Fails unless each reply (:func:`describe_reply`) carries only the model's and the optimizer's arrays, counts,
    per-scan scores and labels (at most one value per scan of the largest site), per-site moments and string ids,
    and every train reply carries the model."""
    model = {k: list(np.shape(v)) for k, v in initial_state(cfg.model, cfg.train.seed).items()}
    encoder, _ = network(cfg.model)
    n_taps = encode(encoder.eval(), torch.zeros(1, 1, *cfg.model.input_shape))[1].shape[1]
    norms = [m.num_features for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert largest_site not in (n_taps, len(norms), sum(norms))  # a list of moments cannot pass for per-scan values
    for r in records:
        for key, shape in r["arrays"].items():  # only the model's and the optimizer's arrays
            part, _, rest = key.partition(".")
            if part == "optim":
                i, _, field = rest.partition(".")
                assert field in {"step", "exp_avg", "exp_avg_sq"} and int(i) < len(model)
            else:
                assert model[key] == shape, key
            assert int(np.prod(shape)) != int(np.prod(cfg.model.input_shape))  # never an image
        assert set(r["metrics"]) <= ALLOWED_METRICS, r["metrics"]
        for key, length in r["metrics"].items():  # per-scan lists are at most one value per scan of the site
            if key in MOMENTS:
                assert length == (1 if key == "feat_n" else n_taps), (key, length)
            elif key in BN_MOMENTS:
                assert length == (len(norms) if key == "bn_n" else sum(norms)), (key, length)
            else:
                assert length is None or length <= largest_site
        for key, types in r["configs"].items():  # ids and reasons only: strings
            assert types in (["str"], []), (key, types)
    trains = [r for r in records if r["type"] == "train"]
    assert trains and all(r["arrays"] for r in trains)


@pytest.mark.slow
@pytest.mark.flower
def test_sites_send_only_model_arrays_counts_scores_and_ids(tiny_cohort, tmp_path):
    from flwr.simulation import run_simulation

    from fedqc.experiment.run_dir import RunDir
    from fedqc.experiment.runner import run_experiment
    from fedqc.transport.flower.client_app import make_client_app
    from fedqc.transport.flower.server_app import make_server_app

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = tiny_config(tiny_cohort / "manifest.csv", **{"train.cycles": 2, "arms": ["clean", "qc"],
                                                       "qc": {"audit": True}, "engine": "flower",
                                                       "calibration": {"batchnorm": "federated", "bn_passes": 1}})
    RunDir(tmp_path / "run").prepare(cfg, resume=False, overwrite=False)
    log = tmp_path / "messages.jsonl"
    n_sites = load_manifest(cfg.manifest)["site"].nunique()
    server = make_server_app(lambda transport, *_: run_experiment(cfg, transport, tmp_path / "run", quiet=True),
                             cfg=cfg, expected_nodes=n_sites)
    run_simulation(server_app=server,
                   client_app=make_client_app(str(cfg.manifest), mods=[Recorder(str(log))]),
                   num_supernodes=n_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False, "logging_level": "ERROR"}})
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["type"] for r in records} == {"query", "train", "evaluate"}

    check_replies(records, cfg, load_manifest(cfg.manifest).groupby("site").size().max())
    assert any(MOMENTS <= set(r["metrics"]) for r in records) and any("ood" in r["metrics"] for r in records)
    assert any(BN_MOMENTS <= set(r["metrics"]) for r in records)
