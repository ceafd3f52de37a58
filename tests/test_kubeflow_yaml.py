"""deploy/kubeflow-pytorchjob.yaml: a PyTorchJob the training-operator accepts and that runs
``danlu train --distributed`` under torchrun with its data and runs on PVCs.

No cluster here: the YAML is checked against tests/kubeflow_pytorchjob.schema.json (the fields
of the operator's CRD that matter, written from its documentation) with ``jsonschema`` when it
is installed, and by structural checks of what danlu needs either way.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "deploy" / "kubeflow-pytorchjob.yaml"
SCHEMA = Path(__file__).parent / "kubeflow_pytorchjob.schema.json"


@pytest.fixture(scope="module")
def job():
    return yaml.safe_load(JOB.read_text())


def _replicas(job):
    return job["spec"]["pytorchReplicaSpecs"]


def _container(spec):
    return next(c for c in spec["template"]["spec"]["containers"] if c["name"] == "pytorch")


def test_schema(job):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(job, schema, cls=jsonschema.Draft202012Validator)


def test_schema_rejects_what_the_operator_rejects(job):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    bad = json.loads(json.dumps(job))
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(job))
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(job))
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] \
        = "trainer"  # the operator configures only the container named pytorch
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_structure(job):
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = _replicas(job)
    assert set(specs) == {"Master", "Worker"}
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    for role, spec in specs.items():
        assert spec["restartPolicy"] == "OnFailure", role
        pod = spec["template"]["spec"]
        c = _container(spec)
        assert c["image"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), role
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert set(mounts.values()) <= set(volumes), f"{role}: mount of an undeclared volume"
        assert "persistentVolumeClaim" in volumes[mounts["/data"]]
        assert "persistentVolumeClaim" in volumes[mounts["/runs"]]


def _script(spec) -> str:
    c = _container(spec)
    return " ".join(c.get("command", []) + c.get("args", []))


def test_command_runs_danlu_distributed_and_resumes(job):
    specs = _replicas(job)
    scripts = {role: _script(spec) for role, spec in specs.items()}
    assert scripts["Master"] == scripts["Worker"]  # every pod runs the same program
    script = scripts["Master"]
    assert "torchrun" in script and "-m danlu" in script
    for var in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert "${" + var + "}" in script, var
    starts = [line for line in script.splitlines() if "train --distributed" in line]
    assert len(starts) == 2  # a fresh start and a resume
    assert any("--resume" in s for s in starts)
    fresh = script[script.index("--data"):].split("fi")[0].replace("\\\n", " ")
    args = shlex.split(fresh)
    opts = dict(zip(args[::2], args[1::2], strict=False))
    assert opts["--project"].startswith("/runs")  # checkpoints land on the runs PVC
    assert opts["--data"].startswith("/data")
    # --batch is the global batch: it must split over the processes
    nproc = int(re.search(r"--nproc-per-node=(\d+)", script).group(1))
    processes = nproc * sum(s["replicas"] for s in specs.values())
    assert int(opts["--batch"]) % processes == 0
    # the options exist: parse them with danlu's own config
    from danlu.train.config import TrainConfig

    known = {k.replace("_", "-") for k in TrainConfig().to_dict()} | {"exist-ok"}
    used = {a[2:] for a in args if a.startswith("--")}
    assert used <= known, used - known
