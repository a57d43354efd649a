"""Sites as deployed: one folder per site holding only that site's manifest rows and scans.

``split_sites`` turns an experiment's manifest into ``OUT/<site>/manifest.csv`` (paths
relative to the folder) and ``OUT/<site>/images/``, plus ``OUT/sites.csv`` listing the
sites and their scan counts per split. A SuperNode then names its site and manifest in
its node config, ``site="<site>" manifest="<folder>/manifest.csv"`` (:func:`node_config`),
and mounts nothing else. ``compose_file`` writes the docker-compose topology for such a
folder: a SuperLink, a SuperExec for the ServerApp and, per site, a SuperNode and the
SuperExec that runs its ClientApp with that site's folder mounted read-only; its TLS
variant also admits only SuperNodes whose key (``<site>/keys/``) was registered.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import yaml

from fedqc.data.manifest import load_manifest
from fedqc.errors import UserError
from fedqc.io import atomic_write_csv, atomic_write_text
from fedqc.transport.flower.env import FLOWER_ENV
from fedqc.transport.flower.fast import superexec, supernode

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SITE_MOUNT = "/site"  # where a site's folder is mounted in its containers
SITE_PRIVATE_KEY = "keys/supernode.key"  # a site's SuperNode authentication key, relative to its folder
SITE_PUBLIC_KEY = "keys/supernode.pub"  # its public half, which the coordinator registers


class _NoAliases(yaml.SafeDumper):
    """Write repeated mappings (the shared environment) out in full: compose files stay readable."""

    def ignore_aliases(self, data) -> bool:
        return True


def _service(site: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", site.lower())


def split_sites(manifest: str | Path, out: str | Path, *, overwrite: bool = False) -> pd.DataFrame:
    """Write one folder per site of ``manifest`` under ``out``; return the ``sites.csv`` table.

    Scans are hard-linked when ``out`` is on the same file system, copied otherwise.
    """
    table = load_manifest(manifest)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(out)
    bad = sorted(s for s in table["site"].unique() if not SITE_NAME.match(str(s)))
    if bad:
        raise UserError(f"site names usable as folder names only (letters, digits, . _ -): {', '.join(bad)}")
    services = table["site"].map(_service)
    if services.nunique() != table["site"].nunique():
        raise UserError("two sites differ only in case or punctuation; rename one")
    index = []
    for site, rows in table.groupby("site", sort=True):
        folder = out / site
        rows = rows.copy()
        rel = []
        for src in rows["path"]:
            dst = folder / "images" / Path(src).name
            if dst.exists():
                raise UserError(f"site {site}: two scans share the file name {dst.name}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            rel.append(f"images/{dst.name}")
        rows["path"] = rel
        atomic_write_csv(rows, folder / "manifest.csv")
        counts = rows["split"].value_counts()
        index.append({"site": site, "folder": site, **{s: int(counts.get(s, 0)) for s in ("train", "val", "test")}})
    sites = pd.DataFrame(index)
    atomic_write_csv(sites, out / "sites.csv")
    return sites


def read_sites(folder: str | Path) -> list[str]:
    """Site names of a folder made by :func:`split_sites`."""
    index = Path(folder) / "sites.csv"
    if not index.is_file():
        raise UserError(f"{index} not found (make it with `fedqc sites split`)")
    return [str(s) for s in pd.read_csv(index)["site"]]


def node_config(site: str, folder: str | Path) -> str:
    """The ``--node-config`` of a SuperNode serving ``site`` from ``folder``."""
    return f'site="{site}" manifest="{Path(folder) / "manifest.csv"}"'


CERTS_MOUNT = "/certificates"  # where the TLS variant mounts the CA and server files
KEY_MOUNT = "/keys/supernode.key"  # where a SuperNode finds its private key in the TLS variant
# a site's SuperNode and SuperExec on fedqc's fast path, and the SuperExec's task poll there
FAST_SUPERNODE = ["python", "-m", supernode.__name__]
WARM_SUPEREXEC = ["python", "-m", superexec.__name__]
WARM_SUPEREXEC_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": supernode.TASK_POLL_S}


def compose_file(sites_dir: str | Path, *, config: str, image: str = "fedqc:latest", port: int = 8000,
                 tls: bool = False, certificates: str = "./certificates") -> str:
    """A docker-compose file for the sites under ``sites_dir`` (paths as given, relative to the compose file).

    ``config`` is the experiment YAML inside the image's ``/app`` (the repository is copied
    there); results go to ``./runs`` on the host through the ServerApp's SuperExec.

    ``tls``: the SuperLink serves TLS with ``certificates``' ``server.crt``/``server.key``
    (from ``fedqc sites certificates --host superlink``) and admits only registered
    SuperNodes (``--enable-supernode-auth``). Every client checks it against ``ca.crt``;
    each SuperNode signs with its ``<site>/keys/supernode.key``. A site's SuperExec then
    mounts only the site's ``manifest.csv`` and ``images/``, never its key: the ClientApp
    code comes from the federation, the key must not reach it.

    Each site runs fedqc's fast path (the loopback script's default): its SuperNode is
    ``python -m fedqc.transport.flower.fast.supernode`` and its SuperExec ``python -m
    fedqc.transport.flower.fast.superexec``, Flower's own components with shorter waits
    and forked ClientApps, taking the same arguments. The SuperLink and the ServerApp's
    SuperExec are Flower's stock commands.
    """
    sites_dir = str(sites_dir).rstrip("/")
    if not sites_dir.startswith(("/", "./", "../")):
        sites_dir = f"./{sites_dir}"  # compose reads a bare name as a named volume, not a folder
    certificates = certificates.rstrip("/")
    if not certificates.startswith(("/", "./", "../")):
        certificates = f"./{certificates}"
    ca = f"{CERTS_MOUNT}/ca.crt"
    ca_volume = f"{certificates}/ca.crt:{ca}:ro"
    env = {**FLOWER_ENV, "OMP_NUM_THREADS": "1"}
    base = {"image": image, "environment": env}
    if tls:
        link_security = ["--ssl-ca-certfile", ca, "--ssl-certfile", f"{CERTS_MOUNT}/server.crt",
                         "--ssl-keyfile", f"{CERTS_MOUNT}/server.key", "--enable-supernode-auth"]
        client_security = ["--root-certificates", ca]
    else:
        link_security = client_security = ["--insecure"]
    services: dict = {
        "superlink": {**base, "build": ".", "command": [
            "flower-superlink", *link_security, "--isolation", "process", "--host", "0.0.0.0",
            "--port", str(port), "--disable-runtime-dependency-installation"],
            "ports": [f"{port}:{port}"]},
        "superexec-serverapp": {**base, "command": [
            "flower-superexec", *client_security, "--runtime-api-address", f"superlink:{port}"],
            "volumes": ["./runs:/runs"], "depends_on": ["superlink"]},
    }
    if tls:
        services["superlink"]["volumes"] = [ca_volume] + [f"{certificates}/{f}:{CERTS_MOUNT}/{f}:ro"
                                                          for f in ("server.crt", "server.key")]
        services["superexec-serverapp"]["volumes"].append(ca_volume)
    sites = read_sites(sites_dir)
    for site in sites:
        name = _service(site)
        node_security = [*client_security, "--auth-supernode-private-key", KEY_MOUNT] if tls else client_security
        services[f"supernode-{name}"] = {**base, "command": [
            *FAST_SUPERNODE, *node_security, "--superlink", f"superlink:{port}", "--isolation", "process",
            "--host", "0.0.0.0", "--port", "9094", "--node-config", node_config(site, SITE_MOUNT)],
            "depends_on": ["superlink"]}
        if tls:
            services[f"supernode-{name}"]["volumes"] = [ca_volume,
                                                        f"{sites_dir}/{site}/{SITE_PRIVATE_KEY}:{KEY_MOUNT}:ro"]
            data = [f"{sites_dir}/{site}/{p}:{SITE_MOUNT}/{p}:ro" for p in ("manifest.csv", "images")]
        else:
            data = [f"{sites_dir}/{site}:{SITE_MOUNT}:ro"]
        # the SuperNode's Runtime API (port 9094) stays on the site's own machine: plaintext there
        services[f"superexec-{name}"] = {"image": image, "environment": {**env, **WARM_SUPEREXEC_ENV}, "command": [
            *WARM_SUPEREXEC, "--insecure", "--runtime-api-address", f"supernode-{name}:9094"],
            "volumes": data, "depends_on": [f"supernode-{name}"]}
    command = f"fedqc sites compose --sites {sites_dir} --config {config}" + (" --tls" if tls else "")
    header = (f"# Generated by `{command}`.\n"
              "# Build: docker compose build; start: docker compose up -d; then, from the host:\n"
              f"#   flwr run . compose --run-config \"config='/app/{config}' out='/runs/<name>' "
              f"nodes={len(sites)}\"\n"
              "# with a [superlink.compose] connection (address = \"127.0.0.1:"
              f"{port}\", insecure = true) in $FLWR_HOME/config.toml. TLS: see docs/deployment.md.\n")
    if tls:
        header = (f"# Generated by `{command}`.\n"
                  "# TLS and SuperNode authentication; see docs/deployment.md. Before the first start:\n"
                  f"#   fedqc sites certificates --out {certificates} --host superlink [--host <server name>]\n"
                  f"#   fedqc sites keys --sites {sites_dir}    (each hospital makes its own on its machine)\n"
                  "# Start: docker compose -f docker-compose.tls.yml build && docker compose -f "
                  "docker-compose.tls.yml up -d superlink;\n"
                  "# register each site's public key, then start the rest (up -d) and run, from the host:\n"
                  f"#   flwr supernode register {sites_dir}/<site>/{SITE_PUBLIC_KEY} compose --name <site>\n"
                  f"#   flwr run . compose --run-config \"config='/app/{config}' out='/runs/<name>' "
                  f"nodes={len(sites)}\"\n"
                  "# with a [superlink.compose] connection (address = \"127.0.0.1:"
                  f"{port}\", root-certificates = \"<absolute path of {certificates}/ca.crt>\") in "
                  "$FLWR_HOME/config.toml.\n")
    return header + yaml.dump({"services": services}, Dumper=_NoAliases, sort_keys=False, width=200)


def missing_site_keys(sites_dir: str | Path) -> list[str]:
    """Sites of ``sites_dir`` without a private key: their SuperNodes could not authenticate."""
    return [s for s in read_sites(sites_dir) if not (Path(sites_dir) / s / SITE_PRIVATE_KEY).is_file()]


def write_compose(sites_dir: str | Path, out: str | Path, *, config: str, tls: bool = False) -> Path:
    out = Path(out)
    atomic_write_text(compose_file(sites_dir, config=config, tls=tls), out)
    return out
