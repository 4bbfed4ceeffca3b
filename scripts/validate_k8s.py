#!/usr/bin/env python3
"""Validate the manifests under k8s/ offline, as `kubectl apply` with strict field validation
and the MPI Operator would: MPIJobs against the CRD's openAPIV3Schema with unknown fields
rejected, plus the operator's own rules the schema does not carry; the serving Deployment's pod
template against the same CRD's pod template schema (Kubernetes' own PodTemplateSpec, embedded
in it), its apps/v1 and the Service's v1 fields against the API's shapes written out here, and
the rules the API server and kubelet apply (selectors that match, probes on declared ports).

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


def pod_template_schema(mpijob):
    """Kubernetes' PodTemplateSpec schema, as the MPIJob CRD embeds it for its replicas."""
    replicas = mpijob["properties"]["spec"]["properties"]["mpiReplicaSpecs"]
    return replicas["additionalProperties"]["properties"]["template"]


def closed(properties, required=()):
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = closed({"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS,
                   "annotations": LABELS}, ["name"])
INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def deployment_schema(mpijob):
    """apps/v1 Deployment (the fields a Deployment has), its pod template the real schema."""
    return closed({
        "apiVersion": {"const": "apps/v1"}, "kind": {"const": "Deployment"}, "metadata": METADATA,
        "spec": closed({
            "replicas": {"type": "integer", "minimum": 0},
            "selector": closed({"matchLabels": LABELS, "matchExpressions": {"type": "array"}}),
            "strategy": closed({"type": {"enum": ["RollingUpdate", "Recreate"]},
                                "rollingUpdate": closed({"maxUnavailable": INT_OR_STRING, "maxSurge": INT_OR_STRING})}),
            "template": pod_template_schema(mpijob),
            "minReadySeconds": {"type": "integer"}, "revisionHistoryLimit": {"type": "integer"},
            "progressDeadlineSeconds": {"type": "integer"}, "paused": {"type": "boolean"},
        }, ["selector", "template"]),
    }, ["apiVersion", "kind", "metadata", "spec"])


SERVICE_SCHEMA = closed({
    "apiVersion": {"const": "v1"}, "kind": {"const": "Service"}, "metadata": METADATA,
    "spec": closed({
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "selector": LABELS,
        "ports": {"type": "array", "minItems": 1, "items": closed({
            "name": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "targetPort": INT_OR_STRING, "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "nodePort": {"type": "integer"}, "appProtocol": {"type": "string"}}, ["port"])},
        "sessionAffinity": {"type": "string"},
    }, ["ports"]),
}, ["apiVersion", "kind", "metadata", "spec"])


def deployment_errors(doc):
    """What the API server and kubelet check beyond the schema."""
    errors = []
    spec = doc["spec"]
    labels = spec["template"].get("metadata", {}).get("labels", {})
    selector = spec["selector"].get("matchLabels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        errors.append("spec.selector.matchLabels must be non-empty and match spec.template.metadata.labels")
    pod = spec["template"]["spec"]
    if pod.get("restartPolicy", "Always") != "Always":
        errors.append("a Deployment's pods must have restartPolicy Always")
    for c in pod.get("containers", []):
        ports = c.get("ports", [])
        names = {p.get("name") for p in ports} - {None}
        numbers = {p["containerPort"] for p in ports}
        for probe in ("readinessProbe", "livenessProbe"):
            get = c.get(probe, {}).get("httpGet")
            if get is None:
                errors.append(f"container {c['name']}: {probe}.httpGet is required (the server's health endpoints)")
            elif get["port"] not in names | numbers:
                errors.append(f"container {c['name']}: {probe} port {get['port']!r} is not a declared port")
        argv = list(c.get("args", []))
        if "--listen" in argv:
            port = int(argv[argv.index("--listen") + 1].rsplit(":", 1)[1])
            if port not in numbers:
                errors.append(f"container {c['name']}: --listen port {port} is not a containerPort {sorted(numbers)}")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for m in sorted(mounts - volumes):
            errors.append(f"container {c['name']}: volumeMount {m!r} has no volume")
    return errors


def service_errors(doc, deployments):
    """The Service must select a Deployment's pods and target one of their ports."""
    selector = doc["spec"].get("selector", {})
    for d in deployments:
        labels = d["spec"]["template"].get("metadata", {}).get("labels", {})
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            ports = [p for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
            targets = {p.get("name") for p in ports} | {p["containerPort"] for p in ports}
            return [f"port {p.get('name', p['port'])}: targetPort {p.get('targetPort', p['port'])!r} is not a port of the pods"
                    for p in doc["spec"]["ports"] if p.get("targetPort", p["port"]) not in targets]
    return [f"spec.selector {selector} selects no Deployment's pods in these files"]


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


def schema_errors(doc, schema):
    return [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def validate(doc, schema, others=()):
    """The errors of one document (`others`: every document of the files, for the Service)."""
    kind = doc.get("kind")
    if kind == "Secret":
        unknown = set(doc.get("stringData", {})) - S3_VARIABLES
        return [f"stringData key {k!r} is not a variable funksvd reads" for k in sorted(unknown)]
    if kind == "Deployment":
        errors = schema_errors(doc, deployment_schema(schema))
        return errors or deployment_errors(doc)
    if kind == "Service":
        deployments = [d for d in others if d.get("kind") == "Deployment"]
        return schema_errors(doc, SERVICE_SCHEMA) or service_errors(doc, deployments)
    if kind != "MPIJob":
        return [f"unexpected kind {kind!r}"]
    return schema_errors(doc, schema) + operator_errors(doc)


def serve_self_test(schema, docs):
    """Broken copies of the serving Deployment and Service; the cases wrongly accepted."""
    deployment = next(d for d in docs if d.get("kind") == "Deployment")
    service = next(d for d in docs if d.get("kind") == "Service")
    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]
    broken = {}
    def case(name, change, of=deployment):
        copied = copy.deepcopy(of)
        change(copied)
        broken[name] = copied
    case("misspelt field in the pod template (readinesProbe)",
         lambda d: container(d).__setitem__("readinesProbe", container(d).pop("readinessProbe")))
    case("wrong type (replicas: 'two')", lambda d: d["spec"].__setitem__("replicas", "two"))
    case("selector that does not match the labels",
         lambda d: d["spec"]["selector"]["matchLabels"].__setitem__("app.kubernetes.io/component", "train"))
    case("liveness probe on an undeclared port",
         lambda d: container(d)["livenessProbe"]["httpGet"].__setitem__("port", "metrics"))
    case("--listen on a port the container does not declare",
         lambda d: container(d)["args"].__setitem__(container(d)["args"].index("0.0.0.0:8080"), "0.0.0.0:9090"))
    case("unknown field in the Deployment spec (replica)",
         lambda d: d["spec"].__setitem__("replica", d["spec"].pop("replicas")))
    case("Service selecting no pods", lambda s: s["spec"]["selector"].__setitem__("app.kubernetes.io/name", "other"),
         service)
    case("Service targeting a port the pods lack", lambda s: s["spec"]["ports"][0].__setitem__("targetPort", "grpc"),
         service)
    others = [deployment]
    return [name for name, d in broken.items()
            if not validate(d, schema, others + ([d] if d.get("kind") == "Deployment" else []))]


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
    by_path = {path: [d for d in yaml.safe_load_all(open(path)) if d] for path in argv[1:]}
    every = [d for docs in by_path.values() for d in docs]
    for path, docs in by_path.items():
        if self and any(d.get("kind") == "Deployment" for d in docs):
            accepted = serve_self_test(schema, docs)
            for case in accepted:
                print(f"{path}: broken copy accepted: {case}")
            failed |= bool(accepted)
            continue
        for n, doc in enumerate(docs):
            if self:
                accepted = self_test(schema, doc)
                for case in accepted:
                    print(f"{path}[{n}]: broken copy accepted: {case}")
                failed |= bool(accepted)
                continue
            errors = validate(doc, schema, every)
            for e in errors:
                print(f"{path}[{n}] {doc.get('kind')}: {e}")
            failed |= bool(errors)
            if not errors:
                print(f"{path}[{n}] {doc.get('kind')} {doc.get('metadata', {}).get('name')}: valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
