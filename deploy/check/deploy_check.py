#!/usr/bin/env python3
"""Offline checks of cuttle's deployment files, driven by scripts/deploy-check.sh.

Subcommands (each prints `PASS name: detail` / `FAIL name: detail` lines, exits 1 on a FAIL):

  helm CHART OUTDIR           lint (strict) and schema checks, then render value scenarios
                              to OUTDIR/helm-<scenario>.yaml (+ .NOTES.txt); refusals checked
  openshift TEMPLATE OUTDIR   process the template like `oc process` to OUTDIR/openshift.yaml
  policy FILE --cuttle BIN    the rules every rendering must keep (security context, probes,
                              cache volume vs cache size, drain vs grace period, Service, PDB,
                              NetworkPolicy...) and `cuttle check-config` on the pod's real
                              configuration: ConfigMap, Secret files and environment
  containerfiles A B          the final stages of two Containerfiles agree
  image OCI_DIR BINARY        the image's config (User, ExposedPorts, Entrypoint...) and that
                              its one layer holds only /cuttle and /var/cache/cuttle
  ready-time BINARY           start-to-ready: spawn to the first 200 from /readyz

Needs PyYAML and, for `helm`, helm-python-sdk (both installed by deploy-check.sh).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

# A bcrypt entry for the user `build` (password `deploy-check`, cost 5): stands in for the
# operator's htpasswd file where a rendering carries only a placeholder.
TEST_HTPASSWD = "build:$2b$05$.PI.OYJJRRfse9b2Yxl/L.Fbw/kCd24/yKyg3P0SkNQueFfZzwo52\n"

failures = 0


def report(ok: bool, name: str, detail: str = "") -> bool:
    global failures
    if not ok:
        failures += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def load_docs(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def write_docs(path: Path, docs: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


# ---------------------------------------------------------------------------------------
# sizes and durations as cuttle and Kubernetes write them


def cuttle_size(s: str) -> int:
    """cuttle's parse_size: K/M/G/T and KiB... binary, KB/MB... decimal (config/mod.rs)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", s)
    if not m:
        raise ValueError(f"not a cuttle size: {s!r}")
    unit = m.group(2).lower()
    mult = {
        "": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
        "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    }[unit]
    return int(m.group(1)) * mult


def k8s_quantity(s: str | int) -> int:
    """A Kubernetes resource quantity in bytes (Ki/Mi/Gi/Ti binary, k/M/G/T decimal)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i|[kMGTPE])?", str(s))
    if not m:
        raise ValueError(f"not a quantity: {s!r}")
    mult = {
        None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
        "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    }[m.group(2)]
    return int(float(m.group(1)) * mult)


def seconds(s: str) -> float:
    """A humantime duration as cuttle takes it (25s, 1m30s, 2m)."""
    total, rest = 0.0, s.replace(" ", "")
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for num, unit in re.findall(r"(\d+)(ms|s|m|h|d)", rest):
        total += int(num) * units[unit]
    if not re.fullmatch(r"(\d+(ms|s|m|h|d))+", rest):
        raise ValueError(f"not a duration: {s!r}")
    return total


# ---------------------------------------------------------------------------------------
# policy


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def materialize(docs, pod_spec, container, root: Path, fill_htpasswd: bool) -> dict[str, str]:
    """Writes the container's ConfigMap and Secret mounts under `root` as the kubelet would;
    returns mountPath -> local path."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    cms = {d["metadata"]["name"]: d.get("data") or {} for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: secret_data(d) for d in by_kind(docs, "Secret")}
    mounts: dict[str, str] = {}

    def source_files(kind: str, name: str, items, optional: bool) -> dict[str, str]:
        store = cms if kind == "configMap" else secrets
        if name not in store:
            if optional:
                return {}
            raise ValueError(f"{kind} {name} is mounted but not part of the rendering")
        data = store[name]
        if items is None:
            return dict(data)
        out = {}
        for it in items:
            if it["key"] not in data:
                raise ValueError(f"{kind} {name} has no key {it['key']}")
            out[it["path"]] = data[it["key"]]
        return out

    for vm in container.get("volumeMounts", []):
        vol = volumes[vm["name"]]
        files: dict[str, str] | None = None
        if "configMap" in vol:
            c = vol["configMap"]
            files = source_files("configMap", c["name"], c.get("items"), c.get("optional", False))
        elif "secret" in vol:
            s = vol["secret"]
            files = source_files("secret", s["secretName"], s.get("items"), s.get("optional", False))
        elif "projected" in vol:
            files = {}
            for src in vol["projected"]["sources"]:
                for kind in ("configMap", "secret"):
                    if kind in src:
                        s = src[kind]
                        files.update(source_files(kind, s["name"], s.get("items"), s.get("optional", False)))
        if files is None:
            continue
        local = root / vm["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            if fill_htpasswd and rel == "htpasswd" and not re.search(r"^[^#\s][^:]*:\$2", content, re.M):
                content = TEST_HTPASSWD
            (local / rel).write_text(content)
        mounts[vm["mountPath"]] = str(local)
    return mounts


def rewrite_config(config_path: str, mounts: dict[str, str]) -> None:
    """Points the paths inside a materialized config file at the materialized mounts."""
    if not os.path.isfile(config_path):
        return
    text = Path(config_path).read_text()
    for mp, lp in mounts.items():
        for q in ('"', "'"):
            text = text.replace(f"{q}{mp.rstrip('/')}/", f"{q}{lp}/")
    Path(config_path).write_text(text)


def policy(args: argparse.Namespace) -> None:
    label = args.label
    docs = load_docs(Path(args.file))
    # Secrets the rendering expects to exist already (existingSecret values): stand-ins.
    extra = [d for f in args.with_file for d in load_docs(Path(f))]
    t = lambda name: f"{label}: {name}"  # noqa: E731

    deps = by_kind(docs, "Deployment")
    if not report(len(deps) == 1, t("one Deployment"), f"found {len(deps)}"):
        return
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    report(selects(selector, pod_labels), t("Deployment selector matches its pods"))
    report(spec.get("replicas") == args.replicas, t("replicas"), f"{spec.get('replicas')} (want {args.replicas})")

    psc = pod.get("securityContext") or {}
    report(psc.get("runAsNonRoot") is True, t("pod runAsNonRoot"))
    report((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", t("seccompProfile RuntimeDefault"))
    report(pod.get("automountServiceAccountToken") is False, t("no service account token"))
    report("runAsUser" not in psc and "fsGroup" not in psc,
           t("no fixed UID/fsGroup (OpenShift restricted-v2 assigns them)"))

    conts = pod["containers"]
    report(len(conts) == 1, t("one container"))
    c = conts[0]
    sc = c.get("securityContext") or {}
    report(sc.get("readOnlyRootFilesystem") is True, t("readOnlyRootFilesystem"))
    report(sc.get("allowPrivilegeEscalation") is False, t("allowPrivilegeEscalation false"))
    report((sc.get("capabilities") or {}).get("drop") == ["ALL"] and not (sc.get("capabilities") or {}).get("add"),
           t("capabilities: drop ALL, add none"))
    report(not sc.get("privileged") and "runAsUser" not in sc, t("not privileged, no fixed UID"))

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    report(ports.get("proxy") == 3128 and ports.get("admin") == 9128, t("container ports"), str(ports))
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = (c.get(probe) or {}).get("httpGet") or {}
        port = ports.get(g.get("port"), g.get("port"))
        report(g.get("path") == path and port == 9128, t(f"{probe} {path} on the admin port"), f"{g}")

    res = c.get("resources") or {}
    report(bool((res.get("requests") or {}).get("memory")) and bool((res.get("limits") or {}).get("memory")),
           t("memory request and limit"))

    env = {}
    for e in c.get("env", []):
        if not report("value" in e, t(f"env {e['name']} has a literal value")):
            continue
        env[e["name"]] = str(e["value"])

    # The configuration cuttle will see: file (CUTTLE_CONFIG, from its ConfigMap), then env.
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mounts = materialize(docs + extra, pod, c, Path(tmp) / "root", args.placeholder_htpasswd)
        except (KeyError, ValueError) as e:
            report(False, t("ConfigMap/Secret mounts resolve"), str(e))
            return
        report(True, t("ConfigMap/Secret mounts resolve"), ", ".join(sorted(mounts)))

        def local(path: str) -> str:
            for mp, lp in mounts.items():
                if path.startswith(mp.rstrip("/") + "/"):
                    return lp + path[len(mp.rstrip("/")):]
            return path

        toml_cfg: dict[str, Any] = {}
        if "CUTTLE_CONFIG" in env:
            try:
                with open(local(env["CUTTLE_CONFIG"]), "rb") as f:
                    toml_cfg = tomllib.load(f)
                report(True, t("config file parses as TOML"), env["CUTTLE_CONFIG"])
            except (OSError, tomllib.TOMLDecodeError) as e:
                report(False, t("config file parses as TOML"), str(e))

        def effective(key: str, var: str, default: str) -> str:
            return env.get(var, toml_cfg.get(key, default))

        cache_dir = effective("cache-dir", "CUTTLE_CACHE_DIR", "/var/cache/cuttle")
        cache_size = cuttle_size(str(effective("cache-size", "CUTTLE_CACHE_SIZE", "10GiB")))
        cache_mem = cuttle_size(str(effective("cache-mem", "CUTTLE_CACHE_MEM", "256MiB")))
        grace = seconds(effective("shutdown-grace", "CUTTLE_SHUTDOWN_GRACE", "25s"))
        admin = effective("admin-listen", "CUTTLE_ADMIN_LISTEN", "127.0.0.1:9128")
        report(admin == "0.0.0.0:9128", t("admin port on all addresses (kubelet probes)"), admin)

        cache_mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == cache_dir]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if report(len(cache_mounts) == 1, t("cache directory is a volume"), cache_dir):
            vol = vols[cache_mounts[0]["name"]]
            if args.cache_volume == "emptyDir":
                limit = (vol.get("emptyDir") or {}).get("sizeLimit")
                if report(limit is not None, t("cache emptyDir has a sizeLimit")):
                    lim = k8s_quantity(limit)
                    report(cache_size < lim <= cache_size * 1.5,
                           t("cache-size below the emptyDir sizeLimit, with 0-50% headroom"),
                           f"cache-size {cache_size / 2**30:.1f} GiB, sizeLimit {limit}")
            else:
                report(args.cache_volume in vol, t(f"cache volume is {args.cache_volume}"))
        mem_limit = k8s_quantity((res.get("limits") or {}).get("memory", "0"))
        report(mem_limit > cache_mem * 1.5, t("memory limit well above the memory tier"),
               f"limit {mem_limit >> 20} MiB, cache-mem {cache_mem >> 20} MiB")

        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        tgp = pod.get("terminationGracePeriodSeconds", 30)
        report(tgp > grace + pre, t("terminationGracePeriodSeconds above preStop + shutdown-grace"),
               f"{tgp} > {pre} + {grace:g}")

        auth_on = "CUTTLE_AUTH_FILE" in env or "auth-file" in toml_cfg
        report(auth_on == args.auth, t("client authentication " + ("on" if args.auth else "off")))

        # cuttle itself judges the configuration, with a clean environment.
        run_env = {"PATH": "/usr/bin:/bin"}
        for k, v in env.items():
            run_env[k] = local(v)
        if "CUTTLE_CONFIG" in run_env:
            rewrite_config(run_env["CUTTLE_CONFIG"], mounts)
        if args.placeholder_htpasswd:
            # As shipped, the htpasswd file has no user: cuttle must refuse to start.
            with tempfile.TemporaryDirectory() as tmp2:
                raw = materialize(docs + extra, pod, c, Path(tmp2) / "root", False)
                raw_env = {}
                for k, v in run_env.items():
                    for mp, lp in mounts.items():
                        if v.startswith(lp):
                            v = raw[mp] + v[len(lp):]
                    raw_env[k] = v
                if "CUTTLE_CONFIG" in raw_env:
                    rewrite_config(raw_env["CUTTLE_CONFIG"], raw)
                r0 = subprocess.run([args.cuttle, "check-config"], env=raw_env, capture_output=True, text=True)
                report(r0.returncode == 2 and "auth-file" in r0.stderr,
                       t("placeholder htpasswd (no users): cuttle refuses to start"),
                       (r0.stderr.strip().splitlines() or [f"exit {r0.returncode}"])[-1])
        r = subprocess.run([args.cuttle, "check-config"], env=run_env, capture_output=True, text=True)
        report(r.returncode == 0, t("cuttle check-config accepts the pod's configuration"),
               (r.stderr.strip() or f"exit {r.returncode}").splitlines()[-1] if r.returncode else
               f"cache-size {cache_size}, admin {admin}")
        if r.returncode == 0:
            out = r.stdout
            report(f"cache-size = {cache_size}" in out and 'cache-dir = "/var/cache/cuttle"' in out,
                   t("check-config shows the cache on /var/cache/cuttle with the expected size"))
            report(('auth = "off"' in out) != args.auth, t("check-config agrees on authentication"))
            bound = next((ln for ln in out.splitlines() if ln.startswith("# memory bound")), "")
            bound_mib = int(bound.split(":")[-1].split()[0]) if bound else 0
            report(bool(bound) and mem_limit >= bound_mib << 20,
                   t("memory limit at least cuttle's memory formula (README \"Sizing memory\")"),
                   f"limit {mem_limit >> 20} MiB, formula {bound_mib} MiB")
            peer = "CACHE_PEER_FILE" in env
            report(peer, t("parent proxy read from the Secret (CACHE_PEER_FILE)"))
            if args.expect_intercept:
                line = next((ln for ln in out.splitlines() if ln.startswith("intercept =")), "")
                report(args.expect_intercept in line and 'ca = "loaded"' in out,
                       t("check-config: interception on with the CA from the Secret"), line)
            if args.expect_peer:
                # The parents as cuttle read them (from CACHE_PEER or its file), password masked.
                line = next((ln for ln in out.splitlines() if ln.startswith("parents =")), "")
                report(args.expect_peer in line, t(f"check-config shows the parent {args.expect_peer}"), line)

    # Services, NodePort, NetworkPolicy, PDB
    svcs = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    svc = svcs.get(args.service)
    if report(svc is not None, t(f"Service {args.service}"), ", ".join(svcs)):
        sp = {p["name"]: (p["port"], p.get("targetPort")) for p in svc["spec"]["ports"]}
        report(sp.get("proxy") == (3128, "proxy") and sp.get("metrics") == (9128, "admin"),
               t(f"Service {args.service} ports 3128 and 9128"), str(sp))
        report(selects(svc["spec"]["selector"], pod_labels), t(f"Service {args.service} selects the pods"))
    nodeports = [s for s in svcs.values() if s["spec"].get("type") == "NodePort"]
    if args.node_port:
        ok = len(nodeports) == 1 and [p.get("nodePort") for p in nodeports[0]["spec"]["ports"]] == [args.node_port]
        report(ok, t(f"NodePort Service on {args.node_port}"))
        if ok:
            report(nodeports[0]["spec"].get("externalTrafficPolicy") in ("Cluster", "Local"),
                   t("NodePort externalTrafficPolicy set explicitly"))
            report(selects(nodeports[0]["spec"]["selector"], pod_labels), t("NodePort Service selects the pods"))
        report(args.auth, t("NodePort comes with client authentication"))
    else:
        report(not nodeports, t("no NodePort Service"))

    selecting = [n for n in by_kind(docs, "NetworkPolicy") if selects(n["spec"]["podSelector"].get("matchLabels", {}), pod_labels)]
    nps = [n for n in selecting if "Ingress" in n["spec"].get("policyTypes", ["Ingress"])]
    # An egress policy (shared cache store) must not cut DNS or the way out.
    for eg in (n for n in selecting if "Egress" in n["spec"].get("policyTypes", [])):
        rules = eg["spec"].get("egress", [])
        dns = any(p.get("port") == 53 for r in rules for p in r.get("ports", []))
        out = any((f.get("ipBlock") or {}).get("cidr") == "0.0.0.0/0" and not r.get("ports")
                  for r in rules for f in r.get("to", []))
        report(dns and out, t(f"egress NetworkPolicy {eg['metadata']['name']} keeps DNS and the upstream reachable"))
    if report(len(nps) == 1, t("NetworkPolicy selects the pods")):
        rules = nps[0]["spec"].get("ingress", [])
        rule_ports = [[p.get("port") for p in r.get("ports", [])] for r in rules]
        report(["proxy"] in rule_ports and ["admin"] in rule_ports, t("NetworkPolicy admits 3128 and 9128"), str(rule_ports))
        if args.node_port:
            proxy_rule = next(r for r in rules if [p.get("port") for p in r.get("ports", [])] == ["proxy"])
            open_all = "from" not in proxy_rule or any(
                (f.get("ipBlock") or {}).get("cidr") == "0.0.0.0/0" for f in proxy_rule.get("from", []))
            report(open_all, t("NetworkPolicy admits NodePort traffic (outside addresses) on 3128"))
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], pod_labels)]
    report(len(pdbs) == 1 and pdbs[0]["spec"].get("minAvailable") == 1, t("PodDisruptionBudget minAvailable 1"))


# ---------------------------------------------------------------------------------------
# helm


def helm(args: argparse.Namespace) -> None:
    import helm_python as hp  # noqa: PLC0415 (only this subcommand needs it)

    chart, out = Path(args.chart), Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    report(True, "helm engine", f"helm-python-sdk {hp.__version__}, Helm SDK {hp.helm_sdk_version()}")

    lint = hp.lint(chart, strict=True, kube_version=f"v{args.kube_version}")
    bad = [m for m in lint["messages"] if m["severity"] >= 2] + [{"error": e} for e in lint["errors"]]
    report(lint["total_charts_linted"] == 1 and not bad, "helm lint --strict",
           "; ".join(m["error"] for m in bad) or f"{len(lint['messages'])} info message(s)")

    scenarios: dict[str, dict[str, Any]] = {
        "default": {},
        "nodeport": {"nodePort": {"enabled": True}, "auth": {"enabled": True, "htpasswd": TEST_HTPASSWD}},
        "existing-secrets": {
            "cachePeer": {"existingSecret": "corp-proxy", "existingSecretKey": "CACHE_PEER"},
            "auth": {"enabled": True, "existingSecret": "proxy-users"},
            "admin": {"existingSecret": "proxy-admin"},
            "extraSecretFiles": [{"secret": "corp-ca", "key": "ca.pem", "path": "corp-ca.pem"}],
        },
        "large": {
            "replicaCount": 3, "cache": {"sizeGiB": 50, "mem": "1GiB"},
            "resources": {"requests": {"cpu": "250m", "memory": "1280Mi"}, "limits": {"cpu": "4"}},
            "cachePeer": {"value": "corp%5Cbuild:p%40ss:proxy.corp.example:8080"},
            "admin": {"token": "s3cret-token"},
            "config": {"connectPorts": [443, "8443", "9000-9100"], "logFormat": "json",
                       "extra": 'connect-timeout = "5s"\npurge-allow = ["10.0.0.0/8"]'},
            "cacheRules": [{"name": "isos", "pattern": r"\.iso$", "exclude": "/nightly/", "min": "7d", "max": "30d",
                            "ignoreClientNoCache": True, "vary": ["accept"]}],
        },
        "shared": {
            "replicaCount": 3, "autoscaling": {"enabled": True},
            "sharedCache": {"enabled": True, "url": "s3://build-cache/cuttle",
                            "endpoint": "http://minio.minio.svc:9000",
                            "accessKey": "cuttle-example-key", "secretKey": "cuttle-example-secret"},
        },
    }
    if args.ca_dir:
        # With a CA made by `cuttle ca init --intercept registry.example.org,pypi.example.org,...`.
        scenarios["intercept"] = {
            "interception": {"enabled": True, "hosts": ["registry.example.org", "pypi.example.org"],
                             "noIntercept": ["pypi.example.org"], "existingSecret": "cuttle-ca"},
        }
        ca_files = {n: (Path(args.ca_dir) / n).read_text() for n in ("ca.pem", "ca-key.pem")}
    with hp.Chart.load(chart) as ch:
        report(ch.schema is not None, "values.schema.json is part of the chart")
        for name, values in scenarios.items():
            try:
                ch.validate_schema(values)
                rendered = ch.render(values, name="proxy", namespace="builds", is_install=True)
            except hp.HelmError as e:
                report(False, f"helm render {name}", str(e))
                continue
            notes = rendered.pop(f"{ch.name}/templates/NOTES.txt", "")
            docs = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
            write_docs(out / f"helm-{name}.yaml", docs)
            standins = existing_secrets(values)
            if (values.get("interception") or {}).get("enabled"):
                standins.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cuttle-ca"},
                                 "type": "Opaque", "stringData": ca_files})
            if standins:
                write_docs(out / f"helm-{name}.existing.yaml", standins)
            (out / f"helm-{name}.NOTES.txt").write_text(notes)
            report(True, f"helm render {name}", f"{len(docs)} objects")
            want = "HTTP_PROXY=http://" + ("USER:PASSWORD@" if (values.get("auth") or {}).get("enabled") else "") + "proxy.builds.svc:3128"
            report(want in notes, f"helm NOTES.txt {name} prints the HTTP_PROXY line", want)

        # What the chart must refuse.
        refusals = {
            "schema: replicaCount as text": ({"replicaCount": "two"}, "schema"),
            "schema: misspelt key": ({"nodePort": {"enabeld": True}}, "schema"),
            "schema: bad size": ({"cache": {"mem": "lots"}}, "schema"),
            "NodePort without authentication": ({"nodePort": {"enabled": True}}, "render"),
            "auth on without users": ({"auth": {"enabled": True}}, "render"),
            "grace period below the drain": ({"terminationGracePeriodSeconds": 20}, "render"),
            "interception without a CA Secret": ({"interception": {"enabled": True, "hosts": ["pypi.example.org"]}}, "render"),
            "shared cache without a URL": ({"sharedCache": {"enabled": True}}, "render"),
            "schema: shared cache URL not s3://": ({"sharedCache": {"url": "http://bucket"}}, "schema"),
        }
        for name, (values, stage) in refusals.items():
            try:
                if stage == "schema":
                    ch.validate_schema(values)
                else:
                    ch.render(values, name="proxy", namespace="builds")
                report(False, f"helm refuses {name}", "accepted")
            except hp.HelmError as e:
                report(True, f"helm refuses {name}", str(e).strip().splitlines()[-1][:120])


def existing_secrets(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Stand-ins for the Secrets that `existingSecret` values name, with test contents."""
    content = {"cachePeer": "corp%5Cbuild:p%40ss:proxy.corp.example:8080", "auth": TEST_HTPASSWD,
               "admin": "s3cret-token"}
    defaults = {"cachePeer": "cache-peer", "auth": "htpasswd", "admin": "admin-token"}
    out = []
    for section, text in content.items():
        v = values.get(section) or {}
        if v.get("existingSecret"):
            key = v.get("existingSecretKey", defaults[section])
            out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": v["existingSecret"]},
                        "type": "Opaque", "stringData": {key: text}})
    for f in values.get("extraSecretFiles") or []:
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f["secret"]},
                    "type": "Opaque", "stringData": {f["key"]: "stand-in\n"}})
    return out


# ---------------------------------------------------------------------------------------
# openshift


PARAM = re.compile(r"\$\{\{?([A-Z0-9_]+)\}?\}")


def openshift(args: argparse.Namespace) -> None:
    tpl = yaml.safe_load(Path(args.template).read_text())
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    ok = tpl.get("apiVersion") == "template.openshift.io/v1" and tpl.get("kind") == "Template"
    report(ok, "openshift Template apiVersion/kind")
    params = {p["name"]: p for p in tpl.get("parameters", [])}
    report(all(re.fullmatch(r"[A-Z][A-Z0-9_]*", n) for n in params), "openshift parameter names")
    for want in ("CACHE_PEER", "NODE_PORT", "CACHE_SIZE"):
        report(want in params, f"openshift parameter {want}")
    text = json.dumps(tpl.get("objects", [])) + json.dumps(tpl.get("message", ""))
    used = set(PARAM.findall(text))
    report(used <= set(params), "openshift every ${PARAM} is declared", ", ".join(sorted(used - set(params))))
    report(set(params) <= used, "openshift every parameter is used", ", ".join(sorted(set(params) - used)))

    supplied = {"CACHE_PEER": "corp%5Cbuild:p%40ss:proxy.corp.example:8080", "HTPASSWD": TEST_HTPASSWD}
    values = {}
    for n, p in params.items():
        v = supplied.get(n, p.get("value"))
        if v is None and p.get("required"):
            report(False, f"openshift required parameter {n} has a test value")
        values[n] = "" if v is None else str(v)

    def subst(node: Any) -> Any:
        # As `oc process`: "${{P}}" alone becomes the parameter's JSON value, ${P} is text.
        if isinstance(node, dict):
            return {subst(k): subst(v) for k, v in node.items()}
        if isinstance(node, list):
            return [subst(v) for v in node]
        if isinstance(node, str):
            m = re.fullmatch(r"\$\{\{([A-Z0-9_]+)\}\}", node)
            if m:
                try:
                    return json.loads(values[m.group(1)])
                except json.JSONDecodeError:
                    return values[m.group(1)]
            return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda mm: values[mm.group(1)], node)
        return node

    objs = [subst(o) for o in tpl.get("objects", [])]
    labels = tpl.get("labels") or {}
    for o in objs:
        o.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    write_docs(out / "openshift.yaml", objs)
    report(bool(objs), "openshift template processed", f"{len(objs)} objects, parameters {', '.join(sorted(params))}")


# ---------------------------------------------------------------------------------------
# Containerfiles


def final_stage(path: Path) -> list[str]:
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        cur = (cur + " " + s[:-1].strip()) if s.endswith("\\") else (cur + " " + s)
        if not s.endswith("\\"):
            lines.append(" ".join(cur.split()))
            cur = ""
    start = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    stage = lines[start:]
    # COPY --from=STAGE /out/x y  ==  COPY x y (prebuilt context)
    return [re.sub(r"COPY --from=\S+ (.*?)/out/", r"COPY \1", ln).replace("COPY  ", "COPY ") for ln in stage]


def containerfiles(args: argparse.Namespace) -> None:
    a, b = final_stage(Path(args.a)), final_stage(Path(args.b))
    diff = [f"{x!r} vs {y!r}" for x, y in zip(a, b) if x != y]
    report(a == b and a[0] == "FROM scratch", "multi-stage Containerfile's final stage equals Containerfile",
           "; ".join(diff) or f"{len(a)} instructions")


# ---------------------------------------------------------------------------------------
# image


def image(args: argparse.Namespace) -> None:
    """Inspects an OCI image layout (as `buildah push ... oci:DIR:TAG` writes it)."""
    import hashlib  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    root = Path(args.oci)
    blob = lambda digest: root / "blobs" / digest.replace(":", "/", 1)  # noqa: E731
    index = json.loads((root / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    cfg = config.get("config", {})

    report(cfg.get("User") == "1001:0", "image User", repr(cfg.get("User")))
    report(sorted(cfg.get("ExposedPorts", {})) == ["3128/tcp", "9128/tcp"], "image ExposedPorts",
           ", ".join(sorted(cfg.get("ExposedPorts", {}))))
    report(cfg.get("Entrypoint") == ["/cuttle"] and not cfg.get("Cmd"), "image Entrypoint",
           f"{cfg.get('Entrypoint')} Cmd {cfg.get('Cmd')}")
    env = dict(e.split("=", 1) for e in cfg.get("Env", []))
    report(env.get("CUTTLE_CACHE_DIR") == "/var/cache/cuttle" and env.get("CUTTLE_ADMIN_LISTEN") == "0.0.0.0:9128",
           "image Env (cache dir, admin port on all addresses)")
    report(cfg.get("StopSignal") == "SIGTERM", "image StopSignal")
    report(config.get("os") == "linux" and config.get("architecture") == "amd64", "image platform linux/amd64")
    layers = manifest["layers"]
    report(len(layers) == 1, "image has one layer (FROM scratch, no base)", f"{len(layers)}")

    # The layer holds the binary and the cache directory, nothing else: no shell, no libc,
    # no /etc (passwd, ssl), no package database.
    want = {
        "cuttle": ("file", 0o755, 0, 0),
        "var": ("dir", 0o755, 0, 0),
        "var/cache": ("dir", 0o755, 0, 0),
        "var/cache/cuttle": ("dir", 0o770, 1001, 0),
    }
    got = {}
    binary_sha = None
    uncompressed = 0
    for layer in layers:
        with tarfile.open(blob(layer["digest"]), "r:*") as tf:
            for m in tf.getmembers():
                name = m.name.lstrip("./").rstrip("/")
                if not name:
                    continue
                kind = "dir" if m.isdir() else "file" if m.isfile() else "other"
                got[name] = (kind, m.mode & 0o7777, m.uid, m.gid)
                uncompressed += m.size
                if name == "cuttle":
                    f = tf.extractfile(m)
                    binary = f.read() if f else b""
                    binary_sha = hashlib.sha256(binary).hexdigest()
                    if args.extract:
                        Path(args.extract).write_bytes(binary)
                        os.chmod(args.extract, 0o755)
    listing = ", ".join(f"{n} {k} {oct(mo)[2:]} {u}:{g}" for n, (k, mo, u, g) in sorted(got.items()))
    report(got == want, "image layer holds only /cuttle and /var/cache/cuttle (1001:0, 0770)", listing)
    local_sha = hashlib.sha256(Path(args.binary).read_bytes()).hexdigest()
    report(binary_sha == local_sha, "image /cuttle is the staged static binary", f"sha256 {local_sha[:16]}...")

    compressed = sum(x["size"] for x in layers) + manifest["config"]["size"]
    print(f"INFO image size: {compressed / 1e6:.2f} MB compressed (what a registry stores and a node "
          f"pulls), {uncompressed / 1e6:.2f} MB uncompressed", flush=True)


def ready_time(args: argparse.Namespace) -> None:
    """Start-to-ready: from spawning the binary to the first 200 from /readyz."""
    import http.client  # noqa: PLC0415
    import statistics  # noqa: PLC0415
    import time  # noqa: PLC0415

    times = []
    for i in range(args.runs):
        cache = tempfile.mkdtemp(prefix="cuttle-ready-")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [args.cuttle, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--cache-dir", cache],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={"PATH": "/usr/bin:/bin"})
        admin = None
        ready = None
        try:
            assert proc.stderr is not None
            deadline = t0 + 10
            for line in proc.stderr:
                m = re.search(r"admin=(\S+)", line)
                if m:
                    admin = m.group(1)
                    break
                if time.perf_counter() > deadline:
                    break
            while admin and time.perf_counter() < deadline:
                host, port = admin.rsplit(":", 1)
                try:
                    conn = http.client.HTTPConnection(host, int(port), timeout=1)
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        ready = time.perf_counter() - t0
                        break
                except OSError:
                    pass
                time.sleep(0.001)
        finally:
            proc.terminate()
            rc = proc.wait(timeout=30)
            subprocess.run(["rm", "-rf", cache], check=False)
        if not report(ready is not None and rc == 0, f"start-to-ready run {i + 1}",
                      f"{ready * 1000:.1f} ms, exit {rc} after SIGTERM" if ready else f"not ready, exit {rc}"):
            return
        times.append(ready * 1000)
    print(f"INFO start-to-ready (spawn to first /readyz 200), {args.runs} runs: median "
          f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("helm")
    h.add_argument("chart")
    h.add_argument("outdir")
    h.add_argument("--kube-version", default="1.30.0")
    h.add_argument("--ca-dir", help="a CA from `cuttle ca init` (ca.pem, ca-key.pem): adds an interception scenario")
    o = sub.add_parser("openshift")
    o.add_argument("template")
    o.add_argument("outdir")
    p = sub.add_parser("policy")
    p.add_argument("file")
    p.add_argument("--label", required=True)
    p.add_argument("--cuttle", required=True)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--service", default="proxy")
    p.add_argument("--auth", action="store_true")
    p.add_argument("--node-port", type=int, default=0)
    p.add_argument("--cache-volume", default="emptyDir")
    p.add_argument("--expect-peer", help="a parent host:port that check-config must show")
    p.add_argument("--expect-intercept", help="an intercepted host that check-config must show, with a CA loaded")
    p.add_argument("--with", dest="with_file", action="append", default=[],
                   help="YAML of objects that exist beforehand (Secrets named by existingSecret)")
    p.add_argument("--placeholder-htpasswd", action="store_true",
                   help="the htpasswd file ships without users: check that cuttle refuses it, then "
                   "check the rest with a test user in it")
    im = sub.add_parser("image")
    im.add_argument("oci", help="OCI image layout directory")
    im.add_argument("binary", help="the binary that was put in the image")
    im.add_argument("--extract", help="write the image's /cuttle here")
    rt = sub.add_parser("ready-time")
    rt.add_argument("cuttle")
    rt.add_argument("--runs", type=int, default=5)
    cf = sub.add_parser("containerfiles")
    cf.add_argument("a")
    cf.add_argument("b")
    args = ap.parse_args()
    {"helm": helm, "openshift": openshift, "policy": policy, "containerfiles": containerfiles,
     "image": image, "ready-time": ready_time}[args.cmd.replace("_", "-")](args)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
