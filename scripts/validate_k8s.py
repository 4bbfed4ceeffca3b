#!/usr/bin/env python3
"""Validate the MPIJob manifests under k8s/ offline, as `kubectl apply` with strict field
validation and the MPI Operator would: against the CRD's openAPIV3Schema with unknown fields
rejected, plus the operator's own rules the schema does not carry.

    validate_k8s.py CRD.yaml MANIFEST.yaml...   # exit 0 when every document is valid
    validate_k8s.py --self-test CRD.yaml MANIFEST.yaml   # broken copies must be rejected

Needs PyYAML and jsonschema (scripts/test.sh installs them in target/venv).
"""
import copy
import re
import sys

import jsonschema
import yaml

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


def strict(schema):
    """Reject unknown fields wherever the schema lists the known ones (kubectl --validate=strict)."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def mpijob_schema(crd_path):
    crd = yaml.safe_load(open(crd_path))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v2beta1")
    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # apiVersion/kind/metadata are checked by the API server, not the CRD schema.
    schema.setdefault("properties", {})
    return schema


def mpirun_ranks(args):
    for flag in ("-n", "-np", "--np", "-c"):
        if flag in args:
            return int(args[args.index(flag) + 1])
    return None


def operator_errors(doc):
    """The MPI Operator's own validation (pkg/apis/kubeflow/validation), which the schema omits."""
    errors = []
    name = doc.get("metadata", {}).get("name", "")
    if not DNS1123.match(name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} is not a DNS-1123 label")
    if doc.get("apiVersion") != "kubeflow.org/v2beta1":
        errors.append(f"apiVersion {doc.get('apiVersion')!r} is not kubeflow.org/v2beta1")
    specs = doc.get("spec", {}).get("mpiReplicaSpecs", {})
    if set(specs) - {"Launcher", "Worker"}:
        errors.append(f"mpiReplicaSpecs has unknown roles {sorted(set(specs) - {'Launcher', 'Worker'})}")
    launcher = specs.get("Launcher")
    if launcher is None:
        errors.append("mpiReplicaSpecs.Launcher is required")
    elif launcher.get("replicas", 1) != 1:
        errors.append("mpiReplicaSpecs.Launcher.replicas must be 1")
    for role, spec in specs.items():
        policy = spec.get("restartPolicy", "Never")
        if policy not in RESTART_POLICIES:
            errors.append(f"{role}.restartPolicy {policy!r} is not one of {sorted(RESTART_POLICIES)}")
        if not spec.get("template", {}).get("spec", {}).get("containers"):
            errors.append(f"{role}.template.spec.containers is empty")
    worker = specs.get("Worker")
    if launcher and worker:
        container = launcher["template"]["spec"]["containers"][0]
        argv = list(container.get("command", [])) + list(container.get("args", []))
        ranks = mpirun_ranks(argv)
        slots = doc["spec"].get("slotsPerWorker", 1)
        if ranks is not None and ranks != worker.get("replicas", 1) * slots:
            errors.append(f"mpirun -n {ranks} != Worker.replicas x slotsPerWorker = {worker.get('replicas', 1) * slots}")
        if "mpirun" in argv[:1] and "--hostfile" not in argv:
            errors.append("mpirun needs --hostfile /etc/mpi/hostfile (OpenMPI 5 ignores the operator's variables)")
    return errors


# The variables funksvd reads for S3 (src/store.rs).
S3_VARIABLES = {
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT", "MINIO_ENDPOINT", "AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN",
}


def validate(doc, schema):
    if doc.get("kind") == "Secret":
        unknown = set(doc.get("stringData", {})) - S3_VARIABLES
        return [f"stringData key {k!r} is not a variable funksvd reads" for k in sorted(unknown)]
    if doc.get("kind") != "MPIJob":
        return [f"unexpected kind {doc.get('kind')!r}"]
    errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    return errors + operator_errors(doc)


def self_test(schema, doc):
    """Each broken copy must be rejected; returns the cases that were wrongly accepted."""
    broken = {}
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["slotsPerWorker"] = "two"
    broken["wrong type (slotsPerWorker: 'two')"] = wrong_type
    missing = copy.deepcopy(doc)
    del missing["spec"]["mpiReplicaSpecs"]
    broken["missing required field (mpiReplicaSpecs)"] = missing
    misspelt = copy.deepcopy(doc)
    misspelt["spec"]["slotPerWorker"] = misspelt["spec"].pop("slotsPerWorker")
    broken["misspelt field (slotPerWorker)"] = misspelt
    nested = copy.deepcopy(doc)
    nested["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    broken["misspelt field in the pod template (imagePullPolicyy)"] = nested
    two_launchers = copy.deepcopy(doc)
    two_launchers["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] = 2
    broken["two launchers"] = two_launchers
    bad_policy = copy.deepcopy(doc)
    bad_policy["spec"]["mpiReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    broken["unknown restartPolicy"] = bad_policy
    bad_name = copy.deepcopy(doc)
    bad_name["metadata"]["name"] = "FunkSVD_Train"
    broken["name that is not DNS-1123"] = bad_name
    wrong_n = copy.deepcopy(doc)
    wrong_n["spec"]["slotsPerWorker"] = 3
    broken["-n not replicas x slotsPerWorker"] = wrong_n
    return [case for case, d in broken.items() if not validate(d, schema)]


def main(argv):
    self = argv[:1] == ["--self-test"]
    if self:
        argv = argv[1:]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    schema = mpijob_schema(argv[0])
    failed = False
    for path in argv[1:]:
        for n, doc in enumerate(d for d in yaml.safe_load_all(open(path)) if d):
            if self:
                accepted = self_test(schema, doc)
                for case in accepted:
                    print(f"{path}[{n}]: broken copy accepted: {case}")
                failed |= bool(accepted)
                continue
            errors = validate(doc, schema)
            for e in errors:
                print(f"{path}[{n}] {doc.get('kind')}: {e}")
            failed |= bool(errors)
            if not errors:
                print(f"{path}[{n}] {doc.get('kind')} {doc.get('metadata', {}).get('name')}: valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
