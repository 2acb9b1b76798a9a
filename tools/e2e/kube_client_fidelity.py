"""The official Kubernetes Python client against an API server (tests/kubesim.rs runs it against
the simulated one): create, get, list by label, watch and delete pods and services, and the
errors a real cluster gives. Prints one JSON object of what it saw; the Rust test judges it.

usage: kube_client_fidelity.py KUBECONFIG NAMESPACE VIEWER_KUBECONFIG BAD_KUBECONFIG
"""

import json
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def api(path):
    return client.CoreV1Api(config.new_client_from_config(config_file=path))


def err(call):
    try:
        call()
    except ApiException as e:
        body = json.loads(e.body) if e.body else {}
        return {"status": e.status, "reason": body.get("reason"), "message": body.get("message"),
                "kind": body.get("kind"), "causes": (body.get("details") or {}).get("causes")}
    return None


def pod(name, labels, deadline=None):
    spec = client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox:1.36")])
    if deadline:
        spec.active_deadline_seconds = deadline
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name, labels=labels), spec=spec)


def svc(name, node_port=None):
    port = client.V1ServicePort(port=22, target_port=22, node_port=node_port)
    return client.V1Service(metadata=client.V1ObjectMeta(name=name, labels={"app": "py"}),
                            spec=client.V1ServiceSpec(type="NodePort", selector={"app": "py"},
                                                      ports=[port]))


def main():
    kubeconfig, ns, viewer, bad = sys.argv[1:5]
    v1 = api(kubeconfig)
    out = {}

    # A watch on labelled pods, from now, in the background.
    events = []
    start_rv = v1.list_namespaced_pod(ns).metadata.resource_version
    done = threading.Event()

    def follow():
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_pod, ns, label_selector="app=py",
                           resource_version=start_rv, timeout_seconds=20):
            events.append((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED":
                w.stop()
        done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()

    # And one on services labelled app=py.
    svc_events = []
    svc_done = threading.Event()
    svc_rv = v1.list_namespaced_service(ns).metadata.resource_version

    def follow_services():
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_service, ns, label_selector="app=py",
                           resource_version=svc_rv, timeout_seconds=20):
            svc_events.append((ev["type"], ev["object"].metadata.name,
                               ev["object"].spec.ports[0].node_port))
            if ev["type"] == "DELETED":
                w.stop()
        svc_done.set()

    threading.Thread(target=follow_services, daemon=True).start()

    created = v1.create_namespaced_pod(ns, pod("py-a", {"app": "py"}))
    out["created"] = {"uid": bool(created.metadata.uid), "rv": created.metadata.resource_version,
                      "phase": created.status.phase,
                      "restartPolicy": created.spec.restart_policy,
                      "grace": created.spec.termination_grace_period_seconds,
                      "dnsPolicy": created.spec.dns_policy,
                      "created_at": created.metadata.creation_timestamp is not None}
    v1.create_namespaced_pod(ns, pod("py-b", {"app": "other"}))
    got = v1.read_namespaced_pod("py-a", ns)
    out["got_uid_same"] = got.metadata.uid == created.metadata.uid
    out["list_app_py"] = sorted(p.metadata.name for p in
                                v1.list_namespaced_pod(ns, label_selector="app=py").items)
    out["list_notin"] = sorted(p.metadata.name for p in
                               v1.list_namespaced_pod(ns, label_selector="app notin (py)").items)
    out["dup"] = err(lambda: v1.create_namespaced_pod(ns, pod("py-a", {"app": "py"})))
    out["missing"] = err(lambda: v1.read_namespaced_pod("py-nope", ns))

    # activeDeadlineSeconds: set on create, lowered is fine, raised or removed is refused.
    v1.create_namespaced_pod(ns, pod("py-dl", {"app": "dl"}, deadline=600))
    out["deadline_lowered"] = v1.patch_namespaced_pod(
        "py-dl", ns, {"spec": {"activeDeadlineSeconds": 300}}).spec.active_deadline_seconds
    out["deadline_raised"] = err(lambda: v1.patch_namespaced_pod(
        "py-dl", ns, {"spec": {"activeDeadlineSeconds": 900}}))
    out["deadline_invalid"] = err(lambda: v1.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-dl0"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox")],
                              active_deadline_seconds=-5))))

    # NodePort: allocated when unset, a taken one is 422.
    s1 = v1.create_namespaced_service(ns, svc("py-svc"))
    out["node_port"] = s1.spec.ports[0].node_port
    out["port_taken"] = err(lambda: v1.create_namespaced_service(
        ns, svc("py-svc2", node_port=s1.spec.ports[0].node_port)))
    out["port_range"] = err(lambda: v1.create_namespaced_service(ns, svc("py-svc3", node_port=80)))
    listed = v1.list_namespaced_service(ns, label_selector="app=py")
    out["services"] = [s.metadata.name for s in listed.items]
    got_svc = v1.read_namespaced_service("py-svc", ns)
    out["service_got_same_port"] = got_svc.spec.ports[0].node_port == s1.spec.ports[0].node_port
    deleted_svc = v1.delete_namespaced_service("py-svc", ns)
    svc_done.wait(25)
    out["service_events"] = svc_events
    out["service_deleted_kind"] = type(deleted_svc).__name__
    # The freed port can be taken again.
    again = v1.create_namespaced_service(ns, svc("py-svc4", node_port=s1.spec.ports[0].node_port))
    out["port_reused"] = again.spec.ports[0].node_port == s1.spec.ports[0].node_port

    # Delete; the watch sees it go.
    d = v1.delete_namespaced_pod("py-a", ns)
    out["delete_returned"] = type(d).__name__
    done.wait(25)
    out["events"] = events
    out["deleted_again"] = err(lambda: v1.delete_namespaced_pod("py-nope", ns))

    # Auth: an unknown token, a token without the right.
    out["unauthorized"] = err(lambda: api(bad).list_namespaced_pod(ns))
    out["forbidden"] = err(lambda: api(viewer).create_namespaced_pod(ns, pod("py-v", {})))
    out["viewer_can_list"] = len(api(viewer).list_namespaced_pod(ns).items) >= 1
    print(json.dumps(out))


main()
