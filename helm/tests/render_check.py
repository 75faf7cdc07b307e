#!/usr/bin/python3
"""render_check.py — checks the Polis Helm chart without helm or a cluster.

Renders every template of helm/polis with gotemplate.py (the Go template
subset the chart uses) for the default values and several variants, parses
the output as YAML and checks what `helm install` and the API server would
trip over: kinds, names, selectors against pod labels, named ports, volumes,
control-plane flags against controlplane/main.c's option table, the etcd
member list, grace periods, security contexts; and that the values that must
be refused are refused.  Also checks that every .Values key a template names
exists in values.yaml.

    /usr/bin/python3 helm/tests/render_check.py [-v] [--show SCENARIO]

Exit status 0 when every check passes; each failure is printed.
"""
import copy
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gotemplate  # noqa: E402

CHART = os.path.join(os.path.dirname(HERE), "polis")
REPO = os.path.dirname(os.path.dirname(HERE))
RELEASE = {"Name": "gov", "Namespace": "mesh", "Service": "Helm",
           "IsInstall": True, "IsUpgrade": False, "Revision": 1}

failures = []
verbose = False


def check(cond, scenario, msg):
    if not cond:
        failures.append("%s: %s" % (scenario, msg))
    elif verbose:
        print("ok   %s: %s" % (scenario, msg))
    return cond


# ---- loading --------------------------------------------------------------

def load_chart():
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    sources = {}
    tdir = os.path.join(CHART, "templates")
    for name in sorted(os.listdir(tdir)):
        with open(os.path.join(tdir, name)) as f:
            sources["templates/" + name] = f.read()
    return chart, values, sources


def chart_object(chart):
    """.Chart as Helm exposes it: the Chart.yaml keys, capitalised."""
    out = {}
    for k, v in chart.items():
        out[k[0].upper() + k[1:]] = v
    return out


def coalesce(base, override):
    """Helm's value merge: maps merge, everything else replaces, null
    deletes."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = coalesce(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(engine, chart, values):
    """Render every template; returns (manifests text by template, notes)."""
    data = {"Values": gotemplate.go_values(values),
            "Release": RELEASE, "Chart": chart_object(chart),
            "Capabilities": {"KubeVersion": {"Version": "v1.29.0"}},
            "Template": {"BasePath": "polis/templates"}}
    out = {}
    notes = None
    # NOTES.txt last: its mistakes matter less than a manifest's refusal.
    for name in sorted(engine.trees, key=lambda n: n.endswith("NOTES.txt")):
        base = os.path.basename(name)
        if base.startswith("_"):
            continue
        data["Template"]["Name"] = "polis/" + name
        text = engine.render(name, data)
        if base == "NOTES.txt":
            notes = text
        else:
            out[name] = text
    return out, notes


def parse_manifests(scenario, rendered):
    docs = []
    for name, text in rendered.items():
        try:
            for d in yaml.safe_load_all(text):
                if d is None:
                    continue
                d["__template"] = name
                docs.append(d)
        except yaml.YAMLError as e:
            check(False, scenario, "%s does not parse as YAML: %s\n%s" %
                  (name, e, text))
    return docs


# ---- static checks ----------------------------------------------------------

VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def check_values_refs(sources, values):
    for name, src in sources.items():
        for m in VALUES_REF.finditer(src):
            path = m.group(1)[1:].split(".")
            v = values
            for i, key in enumerate(path):
                if not isinstance(v, dict) or key not in v:
                    check(False, "static", "%s: .Values.%s: %s is not in "
                          "values.yaml" % (name, ".".join(path),
                                           ".".join(path[:i + 1])))
                    break
                v = v[key]


# Maps whose contents are Kubernetes objects or free-form: documented as a
# whole, not key by key.
FREE_FORM = {"resources", "podSecurityContext", "securityContext",
             "podAnnotations", "podLabels", "documents", "annotations",
             "nodeSelector", "affinity", "livenessProbe", "readinessProbe"}


def check_docs(values):
    """Every value is a row of the reference table in docs/deploy.md."""
    with open(os.path.join(REPO, "docs", "deploy.md")) as f:
        doc = f.read()

    def walk(d, path):
        for k, v in d.items():
            p = path + [k]
            if isinstance(v, dict) and v and k not in FREE_FORM:
                walk(v, p)
            else:
                key = ".".join(p)
                check("| `%s` |" % key in doc, "static",
                      "docs/deploy.md documents `%s`" % key)
    walk(values, [])


def controlplane_flags():
    """The flag names of polis-controlplane, from its option table."""
    with open(os.path.join(REPO, "controlplane", "main.c")) as f:
        src = f.read()
    return set(re.findall(r'OPT\("([a-z-]+)"', src)) | {"config"}


def sidecar_flags():
    """The flag names of polis-sidecar, from its option table."""
    with open(os.path.join(REPO, "sidecar", "main.c")) as f:
        src = f.read()
    return set(re.findall(r'OPT\("([a-z-]+)"', src)) | {"config"}


# ---- manifest checks --------------------------------------------------------

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
WORKLOADS = ("Deployment", "StatefulSet")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def pod_labels(w):
    return w["spec"]["template"]["metadata"].get("labels", {})


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_common(sc, docs, values):
    seen = set()
    for d in docs:
        where = "%s %s" % (d.get("kind"), d.get("metadata", {}).get("name"))
        check(d.get("apiVersion") and d.get("kind"), sc,
              "%s has apiVersion and kind" % where)
        name = d.get("metadata", {}).get("name", "")
        check(isinstance(name, str) and DNS_LABEL.match(name)
              and len(name) <= 63, sc,
              "%s: name is a DNS label of at most 63 characters" % where)
        key = (d["kind"], name)
        check(key not in seen, sc, "%s is rendered once" % where)
        seen.add(key)
        labels = d["metadata"].get("labels", {})
        check(labels.get("app.kubernetes.io/instance") == RELEASE["Name"],
              sc, "%s carries the instance label" % where)
        check(all(isinstance(v, str) for v in labels.values()), sc,
              "%s: label values are strings" % where)

    for w in [d for d in docs if d["kind"] in WORKLOADS]:
        where = "%s %s" % (w["kind"], w["metadata"]["name"])
        sel = w["spec"]["selector"]["matchLabels"]
        check(matches(sel, pod_labels(w)), sc,
              "%s: selector matches its pod labels" % where)
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for t in w["spec"].get("volumeClaimTemplates", []):
            volumes[t["metadata"]["name"]] = t
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, sc,
              "%s: pod runs as non-root" % where)
        check(spec.get("serviceAccountName"), sc,
              "%s: has a service account" % where)
        for c in spec["containers"]:
            cw = "%s container %s" % (where, c["name"])
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                p = c.get(probe)
                if check(p is not None, sc, "%s has a %s" % (cw, probe)):
                    port = (p.get("httpGet") or p.get("tcpSocket"))["port"]
                    check(port in ports, sc, "%s: %s port %r is a container "
                          "port" % (cw, probe, port))
            for m in c.get("volumeMounts", []):
                check(m["name"] in volumes, sc, "%s: mount %s has a volume"
                      % (cw, m["name"]))
            csc = c.get("securityContext", {})
            check(csc.get("readOnlyRootFilesystem") is True, sc,
                  "%s: read-only root filesystem" % cw)
            check(csc.get("allowPrivilegeEscalation") is False, sc,
                  "%s: no privilege escalation" % cw)
            check(all(isinstance(a, str) for a in c.get("args", []) +
                      c.get("command", [])), sc,
                  "%s: command and args are strings" % cw)
            for e in c.get("env", []):
                check("valueFrom" in e or isinstance(e.get("value"), str),
                      sc, "%s: env %s is a string" % (cw, e.get("name")))
            check(isinstance(c.get("resources", {}), dict), sc,
                  "%s: resources is a mapping" % cw)
            if "image" in c:
                check(":" in c["image"] and "<" not in c["image"], sc,
                      "%s: image %s has a tag" % (cw, c["image"]))
        for v in spec.get("volumes", []):
            claim = v.get("persistentVolumeClaim")
            if claim:
                check(("PersistentVolumeClaim", claim["claimName"]) in
                      {(d["kind"], d["metadata"]["name"]) for d in docs},
                      sc, "%s: claim %s is rendered" %
                      (where, claim["claimName"]))

    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    for s in by_kind(docs, "Service"):
        where = "Service %s" % s["metadata"]["name"]
        sel = s["spec"].get("selector", {})
        targets = [w for w in workloads if matches(sel, pod_labels(w))]
        check(len(targets) == 1, sc,
              "%s selects the pods of exactly one workload (%d)" %
              (where, len(targets)))
        for w in targets:
            names = {p["name"] for c in pod_spec(w)["containers"]
                     for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                check(p["targetPort"] in names, sc,
                      "%s: targetPort %s is a port of %s" %
                      (where, p["targetPort"], w["metadata"]["name"]))
    for p in by_kind(docs, "PodDisruptionBudget"):
        sel = p["spec"]["selector"]["matchLabels"]
        check(any(matches(sel, pod_labels(w)) for w in workloads), sc,
              "PDB %s selects a workload" % p["metadata"]["name"])
    for n in by_kind(docs, "NetworkPolicy"):
        sel = n["spec"]["podSelector"]["matchLabels"]
        check(any(matches(sel, pod_labels(w)) for w in workloads), sc,
              "NetworkPolicy %s selects a workload" % n["metadata"]["name"])
    sa = values["serviceAccount"]
    if sa["create"]:
        names = {d["metadata"]["name"] for d in by_kind(docs,
                                                        "ServiceAccount")}
        for w in workloads:
            check(pod_spec(w)["serviceAccountName"] in names, sc,
                  "%s uses the rendered service account" %
                  w["metadata"]["name"])


def flag_values(args):
    out = {}
    for a in args:
        m = re.match(r"^--([a-z-]+)=(.*)$", a)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def check_controlplane(sc, docs, values):
    cps = [d for d in by_kind(docs, "Deployment")
           if d["metadata"]["name"].endswith("-controlplane")]
    if not check(len(cps) == 1, sc, "one control-plane Deployment"):
        return
    cp = cps[0]
    v = values["controlPlane"]
    check(cp["spec"]["replicas"] == v["replicas"], sc,
          "control plane replicas = %s" % v["replicas"])
    c = pod_spec(cp)["containers"][0]
    known = controlplane_flags()
    for a in c["args"]:
        m = re.match(r"^--([a-z-]+)", a)
        check(m and m.group(1) in known, sc,
              "control plane arg %s is a flag of polis-controlplane" % a)
    f = flag_values(c["args"])
    check(f.get("etcd-prefix") == values["etcdPrefix"], sc,
          "--etcd-prefix is etcdPrefix")
    check(f.get("shutdown-grace-ms") == str(v["shutdownGraceMs"]), sc,
          "--shutdown-grace-ms is shutdownGraceMs")
    check(f.get("listen", "").endswith(":%d" % v["service"]["ports"]["grpc"])
          and f.get("admin-listen", "").endswith(
              ":%d" % v["service"]["ports"]["admin"]), sc,
          "listen addresses use the service ports")
    for k in ("workers", "max-documents", "etcd-timeout-ms"):
        check(re.match(r"^\d+$", f.get(k, "")), sc,
              "--%s is a plain integer (%s)" % (k, f.get(k)))
    endpoints = f.get("etcd", "").split(",")
    if values["etcd"]["enabled"]:
        sts = by_kind(docs, "StatefulSet")
        check(len(sts) == 1, sc, "one etcd StatefulSet")
        name = sts[0]["metadata"]["name"]
        headless = sts[0]["spec"]["serviceName"]
        want = ["http://%s-%d.%s.%s.svc.cluster.local:%d" %
                (name, i, headless, RELEASE["Namespace"],
                 values["etcd"]["ports"]["client"])
                for i in range(values["etcd"]["replicas"])]
        check(endpoints == want, sc,
              "--etcd lists every etcd member: %s" % f.get("etcd"))
    else:
        check(endpoints == values["etcd"]["external"]["endpoints"], sc,
              "--etcd lists the external endpoints")
    grace = pod_spec(cp)["terminationGracePeriodSeconds"]
    sleep = v["preStopSleepSeconds"]
    check(isinstance(grace, int) and
          grace >= sleep + v["shutdownGraceMs"] / 1000.0 + 1, sc,
          "terminationGracePeriodSeconds %s covers preStop %ss + shutdown "
          "grace %sms" % (grace, sleep, v["shutdownGraceMs"]))
    if sleep > 0:
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        check(cmd == ["sleep", str(sleep)], sc, "preStop sleeps %ss" % sleep)
    probes = (c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"])
    check(probes[0]["path"] == "/healthz" and probes[1]["path"] == "/readyz"
          and probes[0]["port"] == probes[1]["port"] == "admin", sc,
          "liveness /healthz and readiness /readyz on the admin port")


def check_etcd(sc, docs, values):
    sts = by_kind(docs, "StatefulSet")
    if not values["etcd"]["enabled"]:
        check(not sts, sc, "no etcd StatefulSet with external etcd")
        check(not [s for s in by_kind(docs, "Service")
                   if "-etcd" in s["metadata"]["name"]], sc,
              "no etcd Services with external etcd")
        return
    e = values["etcd"]
    s = sts[0]
    name = s["metadata"]["name"]
    n = e["replicas"]
    check(s["spec"]["replicas"] == n, sc, "etcd has %d members" % n)
    check(s["spec"]["podManagementPolicy"] == "Parallel", sc,
          "etcd members start in parallel")
    headless = [x for x in by_kind(docs, "Service")
                if x["metadata"]["name"] == s["spec"]["serviceName"]]
    if check(len(headless) == 1, sc, "the headless Service exists"):
        hs = headless[0]["spec"]
        check(hs.get("clusterIP") == "None" and
              hs.get("publishNotReadyAddresses") is True, sc,
              "headless Service publishes not-ready members")
    c = pod_spec(s)["containers"][0]
    env = {x["name"]: x.get("value") for x in c["env"]}
    domain = "%s.%s.svc.cluster.local" % (s["spec"]["serviceName"],
                                          RELEASE["Namespace"])
    want = ",".join("%s-%d=http://%s-%d.%s:%d" % (name, i, name, i, domain,
                                                 e["ports"]["peer"])
                    for i in range(n))
    check(env.get("ETCD_INITIAL_CLUSTER") == want, sc,
          "initial cluster is built from the replica count: %s" %
          env.get("ETCD_INITIAL_CLUSTER"))
    check(env.get("ETCD_INITIAL_ADVERTISE_PEER_URLS") ==
          "http://$(POD_NAME).%s:%d" % (domain, e["ports"]["peer"]), sc,
          "each member advertises its own peer URL")
    check(env.get("ETCD_NAME") == "$(POD_NAME)", sc,
          "member name is the pod name")
    names = [x["name"] for x in c["env"]]
    check(names.index("POD_NAME") < names.index("ETCD_NAME"), sc,
          "POD_NAME is defined before it is referenced")
    for k in ("ETCD_MAX_TXN_OPS", "ETCD_MAX_REQUEST_BYTES",
              "ETCD_QUOTA_BACKEND_BYTES", "ETCD_AUTO_COMPACTION_RETENTION"):
        check(re.match(r"^\d+$", env.get(k) or ""), sc,
              "%s is a plain integer (%s)" % (k, env.get(k)))
    check(env.get("ETCD_MAX_REQUEST_BYTES") == str(e["maxRequestBytes"]), sc,
          "max request bytes survives float64 values")
    aff = pod_spec(s)["affinity"]["podAntiAffinity"]
    key = ("requiredDuringSchedulingIgnoredDuringExecution"
           if e["antiAffinity"] == "hard"
           else "preferredDuringSchedulingIgnoredDuringExecution")
    check(key in aff, sc, "etcd anti-affinity is %s" % e["antiAffinity"])
    vct = s["spec"]["volumeClaimTemplates"][0]
    check(vct["spec"]["resources"]["requests"]["storage"] ==
          e["persistence"]["size"], sc, "each member has a %s volume" %
          e["persistence"]["size"])
    check(s["spec"]["template"]["spec"]["containers"][0]["image"] ==
          "%s:%s" % (e["image"]["repository"], e["image"]["tag"]), sc,
          "etcd uses the configured official image")


def check_sidecars(sc, docs, values):
    want = values["sidecars"]
    deps = [d for d in by_kind(docs, "Deployment")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") ==
            "sidecar"]
    check(len(deps) == len(want), sc, "%d sidecar Deployments" % len(want))
    cp_svc = [s for s in by_kind(docs, "Service")
              if s["metadata"]["name"].endswith("-controlplane")][0]
    cp_addr = "%s.%s.svc.cluster.local:%d" % (
        cp_svc["metadata"]["name"], RELEASE["Namespace"],
        values["controlPlane"]["service"]["ports"]["grpc"])
    defaults = values["sidecarDefaults"]
    for entry in want:
        dom = entry["domain"]
        mine = [d for d in deps
                if d["metadata"]["labels"].get("polis.io/domain") == dom]
        if not check(len(mine) == 1, sc, "sidecar for %s" % dom):
            continue
        d = mine[0]
        c = pod_spec(d)["containers"][0]
        f = flag_values(c["args"])
        check(c["command"] == ["polis-sidecar"], sc, "%s runs polis-sidecar"
              % dom)
        check(f.get("domain") == dom and f.get("controlplane") == cp_addr
              and f.get("state-dir") == "/var/lib/polis"
              and f.get("listen") == ":%d" % defaults["ports"]["http"]
              and f.get("admin-listen") == ":%d" % defaults["ports"]["admin"],
              sc, "%s flags: %s" % (dom, c["args"]))
        persistent = entry.get("persistence", {}).get(
            "enabled", defaults["persistence"]["enabled"])
        state = [v for v in pod_spec(d)["volumes"] if v["name"] == "state"][0]
        if persistent:
            check("persistentVolumeClaim" in state, sc,
                  "%s keeps its state on a PVC" % dom)
            check(d["spec"].get("strategy", {}).get("type") == "Recreate", sc,
                  "%s with a RWO volume is replaced, not rolled" % dom)
        else:
            check("emptyDir" in state, sc, "%s state in an emptyDir" % dom)
        check(d["spec"]["replicas"] == entry.get("replicas",
                                                 defaults["replicas"]),
              sc, "%s replicas" % dom)
        known = sidecar_flags()
        for flag in f:
            check(flag in known, sc, "--%s is a flag of polis-sidecar" % flag)
        check_sidecar_mqtt(sc, dom, d, f, entry, defaults)


# value -> (volume, mount path, flags and the file each names)
MQTT_SECRETS = {
    "credentialsSecret": ("mqtt-credentials", "/etc/polis/mqtt-credentials",
                          {"mqtt-credentials-dir": ""}),
    "caSecret": ("mqtt-ca", "/etc/polis/mqtt-ca", {"mqtt-ca-file": "ca.crt"}),
    "clientCertSecret": ("mqtt-client", "/etc/polis/mqtt-client",
                         {"mqtt-cert-file": "tls.crt",
                          "mqtt-key-file": "tls.key"}),
}


def check_sidecar_mqtt(sc, dom, d, f, entry, defaults):
    """The MQTT Secrets: mounted read-only where the flags point, with no
    subPath (a rotated Secret must reach the running pod); nothing when
    unset."""
    spec = pod_spec(d)
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    for key, (vol, path, flags) in MQTT_SECRETS.items():
        secret = entry.get("mqtt", {}).get(key) or defaults["mqtt"][key]
        if not secret:
            check(vol not in vols and not any(k in f for k in flags), sc,
                  "%s: no %s without mqtt.%s" % (dom, vol, key))
            continue
        v, m = vols.get(vol), mounts.get(vol)
        check(v is not None and v.get("secret", {}).get("secretName") ==
              secret, sc, "%s mounts Secret %s for mqtt.%s" %
              (dom, secret, key))
        check(m is not None and m["mountPath"] == path and
              m.get("readOnly") is True and "subPath" not in m, sc,
              "%s mounts %s read-only at %s, no subPath" % (dom, vol, path))
        for flag, name in flags.items():
            want = path + ("/" + name if name else "")
            check(f.get(flag) == want, sc, "%s --%s=%s (got %s)" %
                  (dom, flag, want, f.get(flag)))


EXPECTED_DEFAULT = {"ServiceAccount", "Service", "Deployment", "StatefulSet",
                    "PodDisruptionBudget"}


def scenario_ok(engine, chart, base, sc, override, kinds, extra=None):
    values = coalesce(base, override)
    try:
        rendered, notes = render(engine, chart, values)
    except gotemplate.TemplateError as e:
        check(False, sc, "renders: %s" % e)
        return None
    docs = parse_manifests(sc, rendered)
    got = {d["kind"] for d in docs}
    check(got == kinds, sc, "kinds are %s (got %s)" % (sorted(kinds),
                                                        sorted(got)))
    check_common(sc, docs, values)
    check_controlplane(sc, docs, values)
    check_etcd(sc, docs, values)
    check_sidecars(sc, docs, values)
    check(notes and "port-forward svc/" in notes and "POLIS_SERVER" in notes,
          sc, "NOTES.txt explains the port-forward and polisctl")
    if extra:
        extra(sc, docs, values, notes)
    return rendered, notes


def scenario_fails(engine, chart, base, sc, override, expect):
    values = coalesce(base, override)
    try:
        render(engine, chart, values)
    except gotemplate.TemplateFail as e:
        check(expect in str(e), sc, "refused with %r (%s)" % (expect, e))
        return
    except gotemplate.TemplateError as e:
        check(False, sc, "refused by fail, not by an error: %s" % e)
        return
    check(False, sc, "is refused (it rendered)")


def full_extra(sc, docs, values, notes):
    nps = {n["metadata"]["name"] for n in by_kind(docs, "NetworkPolicy")}
    check(len(nps) == 3, sc, "three NetworkPolicies (%s)" % sorted(nps))
    cms = by_kind(docs, "ConfigMap")
    if check(len(cms) == 1, sc, "the sample ConfigMap"):
        data = cms[0]["data"]
        for k, text in data.items():
            doc = yaml.safe_load(text)
            check(doc.get("apiVersion") == "polis/v1" and doc.get("kind"),
                  sc, "sample %s is a polis/v1 document" % k)
    check("sales: Service" in notes, sc, "NOTES lists the sidecars")
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    check(len(pvcs) == 1, sc, "one PVC (sales; crm uses an emptyDir)")


def run(chart, base, sources, show=None):
    """Every check on one version of the templates; returns the failures
    and the number of scenarios."""
    del failures[:]
    check(chart.get("apiVersion") == "v2" and chart.get("appVersion") ==
          "0.1.0", "static", "Chart.yaml: apiVersion v2, appVersion 0.1.0")
    check_values_refs(sources, base)
    check_docs(base)
    try:
        engine = gotemplate.Engine(sources)
    except gotemplate.TemplateError as e:
        check(False, "static", "templates parse: %s" % e)
        return list(failures), 1

    full = {
        "sidecars": [{"domain": "sales",
                      "mqtt": {"credentialsSecret": "sales-mqtt-logins"}},
                     {"domain": "crm", "replicas": 2,
                      "persistence": {"enabled": False}}],
        "sidecarDefaults": {"mqtt": {"caSecret": "broker-ca",
                                     "clientCertSecret": "polis-mqtt-tls"}},
        "networkPolicy": {"enabled": True, "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}]},
        "samplePolicies": {"enabled": True},
        "etcd": {"replicas": 5, "antiAffinity": "soft"},
        "imagePullSecrets": [{"name": "registry"}],
        "controlPlane": {"replicas": 3, "shutdownGraceMs": 10500,
                         "extraArgs": ["--log-format=text"]},
    }
    external = {"etcd": {"enabled": False, "external": {"endpoints": [
        "http://etcd-a.storage:2379", "http://etcd-b.storage:2379"]}},
        "controlPlane": {"replicas": 1, "preStopSleepSeconds": 0}}
    scenarios = [
        ("default", {}, EXPECTED_DEFAULT, None),
        ("full", full, EXPECTED_DEFAULT | {"NetworkPolicy", "ConfigMap",
                                           "PersistentVolumeClaim"},
         full_extra),
        ("external-etcd", external,
         {"ServiceAccount", "Service", "Deployment"}, None),
        ("no-serviceaccount", {"serviceAccount": {"create": False,
                                                   "name": "polis-runner"}},
         EXPECTED_DEFAULT - {"ServiceAccount"}, None),
    ]
    for sc, override, kinds, extra in scenarios:
        r = scenario_ok(engine, chart, base, sc, override, kinds, extra)
        if r and show == sc:
            for name, text in r[0].items():
                print("---\n# Source: polis/%s\n%s" % (name, text))
            print("# NOTES.txt\n" + r[1])

    refusals = [
        ("refuse-embedded-etcd", {"etcd": {"enabled": False}},
         "set etcd.external.endpoints"),
        ("refuse-bad-domain", {"sidecars": [{"domain": "Sales_EU"}]},
         "is not a Polis domain name"),
        ("refuse-missing-domain", {"sidecars": [{"replicas": 1}]},
         "is not a Polis domain name"),
        ("refuse-duplicate-domain", {"sidecars": [{"domain": "sales"},
                                                  {"domain": "sales"}]},
         "listed twice"),
        ("refuse-rwo-replicas", {"sidecars": [{"domain": "sales",
                                               "replicas": 2}]},
         "replicas must be 1"),
        ("refuse-anti-affinity", {"etcd": {"antiAffinity": "maybe"}},
         "hard or soft"),
        ("refuse-cluster-state", {"etcd": {"initialClusterState": "old"}},
         "new or existing"),
    ]
    for sc, override, expect in refusals:
        scenario_fails(engine, chart, base, sc, override, expect)

    return list(failures), len(scenarios) + len(refusals) + 1


# Mistakes this checker must catch: (template, text, replacement, a word of
# the expected failure).  Each is applied alone to a copy of the templates.
MUTATIONS = [
    ("etcd-statefulset.yaml", "int64 $etcd.maxRequestBytes",
     "$etcd.maxRequestBytes", "ETCD_MAX_REQUEST_BYTES"),
    ("controlplane-deployment.yaml", "gt (int $cp.preStopSleepSeconds) 0",
     "gt $cp.preStopSleepSeconds 0", "incompatible types"),
    ("controlplane-deployment.yaml", "replicas: {{ $cp.replicas }}",
     "replicas: {{ .Values.controlPlane.replica }}", "not in values.yaml"),
    ("controlplane-deployment.yaml", "--workers={{ int $cp.workers }}",
     "--worker={{ int $cp.workers }}", "is a flag of polis-controlplane"),
    ("controlplane-deployment.yaml", "path: /readyz", "path: /ready",
     "readiness /readyz"),
    ("controlplane-deployment.yaml", "{{ include \"polis.controlplane."
     "terminationGrace\" . }}", "5", "covers preStop"),
    ("controlplane-service.yaml", "targetPort: admin", "targetPort: http",
     "targetPort http"),
    ("_helpers.tpl", "range $i := until (int .Values.etcd.replicas)",
     "range $i := until 3", "initial cluster"),
    ("etcd-service.yaml", "publishNotReadyAddresses: true",
     "publishNotReadyAddresses: false", "not-ready"),
    ("sidecars.yaml", "claimName: {{ $name }}-state",
     "claimName: {{ $name }}-data", "is rendered"),
    ("sidecars.yaml", "{{- if and $persistent (gt $replicas 1) }}",
     "{{- if false }}", "refuse-rwo-replicas: is refused"),
    ("sidecars.yaml", "    - name: sidecar\n", "    - name: sidecar\n  ",
     "parse as YAML"),
    ("serviceaccount.yaml", "{{- end }}\n", "", "without end"),
    ("sidecars.yaml", "--mqtt-credentials-dir=/etc/polis/mqtt-credentials",
     "--mqtt-credentials-dir=/etc/polis/mqtt", "--mqtt-credentials-dir="),
    ("sidecars.yaml", "--mqtt-ca-file=", "--mqtt-ca=",
     "is a flag of polis-sidecar"),
    ("sidecars.yaml", "secretName: {{ $mqttCA | quote }}",
     "secretName: {{ $mqttCreds | quote }}", "mounts Secret broker-ca"),
    ("controlplane-deployment.yaml",
     '(dict "ctx" . "component" "controlplane")',
     '(dict "ctx" . "component" "cp")', "selector matches"),
]


def mutation_test(chart, base, sources):
    """Apply each mutation alone and demand that some check fails with
    the expected words; returns the mutations that went unnoticed."""
    missed = []
    for tname, old, new, expect in MUTATIONS:
        key = "templates/" + tname
        if sources[key].count(old) < 1:
            missed.append("%s: %r is not in the template (update the "
                          "mutation)" % (tname, old))
            continue
        mutated = dict(sources)
        mutated[key] = sources[key].replace(old, new, 1)
        found, _ = run(chart, base, mutated)
        if not any(expect in f for f in found):
            missed.append("%s: %r -> %r went unnoticed (want %r; got %s)" %
                          (tname, old, new, expect, found[:3]))
    return missed


def main(argv):
    global verbose
    verbose = "-v" in argv
    show = argv[argv.index("--show") + 1] if "--show" in argv else None
    chart, base, sources = load_chart()
    found, n = run(chart, base, sources, show)
    for f in found:
        print("FAIL " + f)
    print("render_check: %d scenario(s), %d failure(s)" % (n, len(found)))
    verbose = False
    missed = mutation_test(chart, base, sources)
    for m in missed:
        print("FAIL mutation " + m)
    print("render_check: %d mutation(s) of the templates, %d unnoticed" %
          (len(MUTATIONS), len(missed)))
    return 1 if found or missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
