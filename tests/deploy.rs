//! The shipped deployments are closed by construction: every example in deploy/ keeps
//! Rocket.Chat off every address but loopback and lets clients in only through the shim, and
//! the Dockerfile builds an image that needs neither root, a shell nor a writable root
//! filesystem. These read the files as shipped (no YAML parser among the dependencies: the
//! checks look for the exact lines a reviewer would, and the embedded config is parsed by the
//! shim's own loader).

use std::path::{Path, PathBuf};

use rocketchat_shim::config::Config;

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

const K8S: &str = "deploy/kubernetes/rocketchat-with-shim.yaml";

/// The YAML documents of a multi-document file, each with its `kind`.
fn k8s_documents() -> Vec<(String, String)> {
    let (_, text) = repo_file(K8S);
    text.split("\n---\n")
        .map(|doc| {
            let kind = doc
                .lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .unwrap_or("")
                .trim()
                .to_owned();
            (kind, format!("{doc}\n"))
        })
        .collect()
}

fn k8s_document(kind: &str) -> String {
    let docs = k8s_documents();
    let mut of_kind = docs.iter().filter(|(k, _)| k == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("{K8S} has no {kind}"))
        .1
        .clone();
    assert!(of_kind.next().is_none(), "{K8S}: one {kind} expected");
    doc
}

/// The lines of the container named `name` in the Deployment (up to the next container or the
/// end of the container list).
fn container(deployment: &str, name: &str) -> String {
    let start = format!("        - name: {name}\n");
    let at = deployment
        .find(&start)
        .unwrap_or_else(|| panic!("no container {name}"));
    let rest = &deployment[at + start.len()..];
    let end = rest
        .lines()
        .position(|l| l.starts_with("        - name: ") || l.starts_with("      volumes:"))
        .unwrap_or(rest.lines().count());
    // Without comments: only what Kubernetes reads.
    rest.lines()
        .take(end)
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_rocket_chat_listens_on_the_pod_loopback_only() {
    let deployment = k8s_document("Deployment");
    let rc = container(&deployment, "rocketchat");
    assert!(
        rc.contains(r#"- { name: BIND_IP, value: "127.0.0.1" }"#),
        "Rocket.Chat must bind loopback:\n{rc}"
    );
    // Nothing declares or probes Rocket.Chat's port on the pod IP.
    assert!(!rc.contains("containerPort"), "{rc}");
    assert!(!rc.contains("Probe"), "{rc}");
    assert!(!deployment.contains("hostNetwork: true"));
    // The Services send traffic to the shim's named ports only.
    for (kind, doc) in k8s_documents() {
        if kind == "Service" {
            assert!(!doc.contains("3000"), "{doc}");
        }
    }
}

#[test]
fn kubernetes_config_is_valid_and_points_at_loopback() {
    let configmap = k8s_document("ConfigMap");
    let at = configmap
        .find("  config.toml: |\n")
        .expect("config.toml key");
    let toml: String = configmap[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    let config = Config::parse(&toml, Path::new("configmap:config.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml: {e}"));
    assert_eq!(config.upstream.url.to_string(), "http://127.0.0.1:3000");
    assert_eq!(config.server.listen.port(), 8080);
    assert_eq!(config.admin.listen.map(|a| a.port()), Some(9090));
}

#[test]
fn kubernetes_network_policy_admits_only_the_shim_ports() {
    let np = k8s_document("NetworkPolicy");
    let want = "\
spec:
  podSelector:
    matchLabels: { app: rocketchat }
  policyTypes: [Ingress]
  ingress:
    - ports:
        - { protocol: TCP, port: 8080 }
    - from:
        - namespaceSelector:
            matchLabels: { kubernetes.io/metadata.name: monitoring }
          podSelector:
            matchLabels: { app.kubernetes.io/name: prometheus }
      ports:
        - { protocol: TCP, port: 9090 }
";
    assert!(np.contains(want), "{np}");
    // The rules are exactly those two: no other port is named.
    let ports: Vec<&str> = np
        .lines()
        .filter(|l| l.contains("port:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        ports,
        [
            "- { protocol: TCP, port: 8080 }",
            "- { protocol: TCP, port: 9090 }"
        ]
    );
}

#[test]
fn kubernetes_shim_runs_the_dockerfile_image_locked_down() {
    let deployment = k8s_document("Deployment");
    assert!(deployment.contains("      automountServiceAccountToken: false\n"));
    let shim = container(&deployment, "shim");
    for line in [
        "image: rocketchat-shim:0.1.0",
        "runAsNonRoot: true",
        "runAsUser: 65532",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "capabilities: { drop: [ALL] }",
        "seccompProfile: { type: RuntimeDefault }",
        // No shell in the image: the pause before the drain is the kubelet's own sleep.
        "preStop: { sleep: { seconds: 5 } }",
    ] {
        assert!(
            shim.lines().any(|l| l.trim().starts_with(line)),
            "missing {line:?}:\n{shim}"
        );
    }
    assert!(!shim.contains("exec:"), "no exec hooks or probes: no shell");
}

#[test]
fn systemd_drop_in_binds_rocket_chat_to_loopback() {
    let (_, dropin) = repo_file("deploy/systemd/rocketchat.service.d/bind-loopback.conf");
    let lines: Vec<&str> = dropin
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(lines, ["[Service]", "Environment=BIND_IP=127.0.0.1"]);
    // The shim's unit tells how to install it, and the shipped config talks to loopback.
    let (_, unit) = repo_file("deploy/systemd/rocketchat-shim.service");
    assert!(unit.contains("/etc/systemd/system/rocketchat.service.d/bind-loopback.conf"));
    let (path, root) = repo_file("config.toml");
    let config = Config::parse(&root, &path).expect("root config.toml");
    assert_eq!(config.upstream.url.to_string(), "http://127.0.0.1:3000");
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_shell_free_at_run_time() {
    let (_, df) = repo_file("Dockerfile");
    let instructions: Vec<&str> = df
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.starts_with(' '))
        .collect();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(froms.len(), 2, "builder and runtime: {instructions:?}");
    assert!(instructions[froms[0]].starts_with("FROM rust:"));
    assert!(instructions[froms[0]].ends_with(" AS builder"));
    let runtime = &instructions[froms[1]..];
    assert_eq!(runtime[0], "FROM gcr.io/distroless/cc-debian12:nonroot");
    // Nothing runs in the runtime stage (it has no shell), and it ends as user 65532.
    assert!(
        !runtime.iter().any(|l| l.starts_with("RUN ")),
        "{runtime:?}"
    );
    assert!(runtime.contains(&"USER 65532:65532"), "{runtime:?}");
    assert!(runtime.contains(&r#"ENTRYPOINT ["/usr/local/bin/rocketchat-shim"]"#));
    // The production image leaves the demo and its embedded stand-in out.
    assert!(
        df.contains("cargo build --release --locked --no-default-features --bin rocketchat-shim")
    );
    let (_, manifest) = repo_file("Cargo.toml");
    assert!(manifest.contains(r#"rocketchat-standin = { path = "standin", optional = true }"#));
    assert!(manifest.contains(r#"demo = ["dep:rocketchat-standin"]"#));
    // The context is an allow-list: no target/, no .git, no local secrets.
    let (_, ignore) = repo_file(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(rules[0], "*");
    assert!(rules[1..].iter().all(|r| r.starts_with('!')), "{rules:?}");
    // Every file the builder copies from the context is let in.
    for copy in instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.starts_with("COPY --from"))
    {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                rules.contains(&format!("!{source}").as_str()),
                "{source} is copied but kept out of the context"
            );
        }
    }
}

/// The ConfigMap's config.toml, parsed by the shim's own loader.
fn configmap_config() -> Config {
    let configmap = k8s_document("ConfigMap");
    let at = configmap
        .find("  config.toml: |\n")
        .expect("config.toml key");
    let toml: String = configmap[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    Config::parse(&toml, Path::new("configmap:config.toml")).expect("valid")
}

#[test]
fn kubernetes_audit_trail_is_on_a_persistent_volume_with_one_writer() {
    let config = configmap_config();
    assert!(config.audit.enabled);
    assert_eq!(
        config.audit.path,
        Path::new("/var/lib/rocketchat-shim/audit.jsonl")
    );
    let deployment = k8s_document("Deployment");
    let shim = container(&deployment, "shim");
    assert!(
        shim.contains("- { name: audit, mountPath: /var/lib/rocketchat-shim }"),
        "{shim}"
    );
    assert!(deployment
        .contains("        - name: audit\n          persistentVolumeClaim: { claimName: rocketchat-shim-audit }\n"));
    assert!(deployment.contains("  strategy: { type: Recreate }\n"));
    let pvc = k8s_document("PersistentVolumeClaim");
    assert!(pvc.contains("  name: rocketchat-shim-audit\n"), "{pvc}");
    // How to ship the lines and the last hash is told where operators read it.
    let (_, text) = repo_file(K8S);
    assert!(text.contains("rocketchat-shim audit verify"));
    assert!(text.contains("last hash"));
}

#[test]
fn systemd_keeps_the_audit_trail_in_its_state_directory() {
    let (_, unit) = repo_file("deploy/systemd/rocketchat-shim.service");
    let lines: Vec<&str> = unit.lines().collect();
    for want in [
        "StateDirectory=rocketchat-shim",
        "StateDirectoryMode=0700",
        "WorkingDirectory=/var/lib/rocketchat-shim",
        "ProtectSystem=strict",
    ] {
        assert!(lines.contains(&want), "missing {want}");
    }
    // The shipped config's trail: on, relative, so under /var/lib/rocketchat-shim there.
    let (path, root) = repo_file("config.toml");
    let config = Config::parse(&root, &path).expect("root config.toml");
    assert!(config.audit.enabled);
    assert!(config.audit.path.is_relative());
}
