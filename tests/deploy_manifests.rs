//! The manifests in `deploy/` are objects the API server takes as written.
//!
//! And they keep the deployment's promises: the gateway on the host network,
//! no privileged container, exactly five capabilities, hugepages, probes on
//! the admin port; RBAC that reads, and writes status only.
//!
//! Every document is parsed into its k8s-openapi or gateway-api type
//! strictly: a field the type does not know fails the test, as the API
//! server's strict field validation would fail the apply, so a typo or a
//! key at the wrong depth shows here rather than as a setting a cluster
//! silently ignores. Failures name the file, the document and the field.

use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::CustomResourceExt;
use rauta_controlplane::policy::BackendTrafficPolicy;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const RBAC: &str = "rbac.authorization.k8s.io/v1";
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const CONTROLLER_NAME: &str = "rauta.dev/gateway-controller";
const NAMESPACE: &str = "rauta-system";
const SERVICE_ACCOUNT: &str = "rauta";
const LEASE: &str = "rauta-gateway-controller";
const ADMIN_PORT: i32 = 9901;
const CAPABILITIES: [&str; 5] = ["NET_ADMIN", "BPF", "PERFMON", "IPC_LOCK", "NET_RAW"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One YAML document of a manifest file.
struct Document {
    /// Relative to the repository root.
    file: PathBuf,
    /// 1-based, counting every `---`-separated document of the file.
    number: usize,
    value: serde_json::Value,
}

impl Document {
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    /// `FILE (document N, KIND NAME)`, the start of every message.
    fn at(&self) -> String {
        format!(
            "{} (document {}, {} {})",
            self.file.display(),
            self.number,
            self.kind(),
            self.value["metadata"]["name"]
                .as_str()
                .unwrap_or("<unnamed>")
        )
    }

    /// The document as a `T`, strictly: the first error, or any field `T`
    /// does not know, fails with its path.
    fn parse<T: DeserializeOwned>(&self) -> T {
        let at = self.at();
        assert!(
            self.value["metadata"]["name"].is_string(),
            "{at}: field `metadata.name`: missing"
        );
        rauta_controlplane::manifests::from_value_strictly(&self.value)
            .unwrap_or_else(|e| panic!("{at}: field `{}`: {}", e.field, e.message))
    }
}

/// Every Kubernetes manifest under `deploy/`, recursively, in name order:
/// `*.yaml` and `*.yml` except kind's cluster config and kustomize's file,
/// which are not API objects.
fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("deploy")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(repo()).unwrap_or(&path);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            let not_api = relative == Path::new("deploy/kind/cluster.yaml")
                || name.starts_with("kustomization.");
            if yaml && !not_api {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The documents of a YAML stream, split at `---` lines.
fn split_documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if separator {
            if index > 0 {
                out.push(&text[start..offset]);
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    out.push(&text[start..]);
    out
}

/// Every non-empty document of every manifest file.
fn documents() -> Vec<Document> {
    let mut out = Vec::new();
    for path in manifest_files() {
        let file = path.strip_prefix(repo()).unwrap_or(&path).to_owned();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (index, source) in split_documents(&text).into_iter().enumerate() {
            let number = index + 1;
            let value: Option<serde_json::Value> =
                serde_saphyr::from_str(source).unwrap_or_else(|e| {
                    panic!("{} (document {number}): not YAML: {e}", file.display())
                });
            match value {
                None | Some(serde_json::Value::Null) => {}
                Some(value) => out.push(Document {
                    file: file.clone(),
                    number,
                    value,
                }),
            }
        }
    }
    assert!(!out.is_empty(), "no manifests under deploy/");
    out
}

/// The documents of one apiVersion and kind, parsed.
fn objects<T: DeserializeOwned>(api_version: &str, kind: &str) -> Vec<(Document, T)> {
    documents()
        .into_iter()
        .filter(|d| d.api_version() == api_version && d.kind() == kind)
        .map(|d| {
            let object = d.parse();
            (d, object)
        })
        .collect()
}

/// Parse a document as the type its apiVersion and kind name.
fn parse_known(doc: &Document) {
    match (doc.api_version(), doc.kind()) {
        ("v1", "Namespace") => {
            let _: Namespace = doc.parse();
        }
        ("v1", "ServiceAccount") => {
            let _: ServiceAccount = doc.parse();
        }
        ("v1", "Service") => {
            let _: Service = doc.parse();
        }
        (RBAC, "ClusterRole") => {
            let _: ClusterRole = doc.parse();
        }
        (RBAC, "ClusterRoleBinding") => {
            let _: ClusterRoleBinding = doc.parse();
        }
        (RBAC, "Role") => {
            let _: Role = doc.parse();
        }
        (RBAC, "RoleBinding") => {
            let _: RoleBinding = doc.parse();
        }
        ("apps/v1", "DaemonSet") => {
            let _: DaemonSet = doc.parse();
        }
        ("apps/v1", "Deployment") => {
            let _: Deployment = doc.parse();
        }
        (GATEWAY_API, "GatewayClass") => {
            let _: GatewayClass = doc.parse();
        }
        (GATEWAY_API, "Gateway") => {
            let _: Gateway = doc.parse();
        }
        (GATEWAY_API, "HTTPRoute") => {
            let _: HttpRoute = doc.parse();
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            let crd: CustomResourceDefinition = doc.parse();
            let ours = BackendTrafficPolicy::crd();
            assert_eq!(
                crd.metadata.name,
                ours.metadata.name,
                "{}: only Rauta's own CRD belongs in deploy/",
                doc.at()
            );
            assert!(
                crd == ours,
                "{}: not the CRD the code defines: regenerate it with `rauta crds`",
                doc.at()
            );
        }
        (api_version, kind) => panic!(
            "{}: fields `apiVersion`/`kind`: {api_version:?} {kind:?} is not a kind this test \
             knows (add its type to parse_known)",
            doc.at()
        ),
    }
}

#[test]
fn every_manifest_is_an_object_the_api_server_takes_as_written() {
    let mut seen = BTreeSet::new();
    for doc in documents() {
        parse_known(&doc);
        seen.insert(format!("{} {}", doc.api_version(), doc.kind()));
    }
    for needed in [
        "v1 Namespace",
        "v1 ServiceAccount",
        "rbac.authorization.k8s.io/v1 ClusterRole",
        "rbac.authorization.k8s.io/v1 ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1 Role",
        "rbac.authorization.k8s.io/v1 RoleBinding",
        "apps/v1 DaemonSet",
        "gateway.networking.k8s.io/v1 GatewayClass",
        "gateway.networking.k8s.io/v1 Gateway",
        "gateway.networking.k8s.io/v1 HTTPRoute",
        "apiextensions.k8s.io/v1 CustomResourceDefinition",
    ] {
        assert!(
            seen.contains(needed),
            "no {needed} under deploy/ (found: {seen:?})"
        );
    }
}

/// The pod spec of a workload, or a failure naming where it is missing.
fn pod_spec<'a>(at: &str, template: Option<&'a PodSpec>) -> &'a PodSpec {
    template.unwrap_or_else(|| panic!("{at}: field `spec.template.spec`: missing"))
}

/// Every container of a pod with its field path.
fn containers(pod: &PodSpec) -> Vec<(String, &Container)> {
    let mut all: Vec<(String, &Container)> = pod
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.template.spec.containers[{i}]"), c))
        .collect();
    all.extend(
        pod.init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (format!("spec.template.spec.initContainers[{i}]"), c)),
    );
    all
}

/// `$(NAME)` references in a command line argument.
fn env_references(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    out
}

/// The value after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

#[test]
fn no_container_anywhere_is_privileged() {
    let mut workloads = Vec::new();
    for (doc, ds) in objects::<DaemonSet>("apps/v1", "DaemonSet") {
        let pod = ds.spec.and_then(|s| s.template.spec);
        workloads.push((doc.at(), pod));
    }
    for (doc, deployment) in objects::<Deployment>("apps/v1", "Deployment") {
        let pod = deployment.spec.and_then(|s| s.template.spec);
        workloads.push((doc.at(), pod));
    }
    for (at, pod) in &workloads {
        let pod = pod_spec(at, pod.as_ref());
        for (path, container) in containers(pod) {
            let privileged = container
                .security_context
                .as_ref()
                .and_then(|s| s.privileged);
            assert_ne!(
                privileged,
                Some(true),
                "{at}: field `{path}.securityContext.privileged`: no container may be privileged"
            );
        }
    }
}

#[test]
fn the_gateway_runs_on_the_host_network_with_five_capabilities_hugepages_and_probes() {
    let daemon_sets = objects::<DaemonSet>("apps/v1", "DaemonSet");
    assert!(!daemon_sets.is_empty(), "no DaemonSet under deploy/");
    for (doc, ds) in &daemon_sets {
        let at = doc.at();
        let spec = ds
            .spec
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: field `spec`: missing"));
        let pod = pod_spec(&at, spec.template.spec.as_ref());
        assert_eq!(
            pod.host_network,
            Some(true),
            "{at}: field `spec.template.spec.hostNetwork`: must be true (the XDP program and \
             the AF_XDP sockets go on the node's interface)"
        );
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some(SERVICE_ACCOUNT),
            "{at}: field `spec.template.spec.serviceAccountName`"
        );

        let index = pod
            .containers
            .iter()
            .position(|c| c.name == "rauta")
            .unwrap_or_else(|| {
                panic!("{at}: field `spec.template.spec.containers`: no container named rauta")
            });
        let path = format!("spec.template.spec.containers[{index}]");
        let gateway = &pod.containers[index];

        let security = gateway
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: field `{path}.securityContext`: missing"));
        assert_eq!(
            security.allow_privilege_escalation,
            Some(false),
            "{at}: field `{path}.securityContext.allowPrivilegeEscalation`"
        );
        let capabilities = security.capabilities.as_ref();
        let added: BTreeSet<&str> = capabilities
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = CAPABILITIES.into_iter().collect();
        assert_eq!(
            added, expected,
            "{at}: field `{path}.securityContext.capabilities.add`: exactly {CAPABILITIES:?}"
        );
        let dropped: Vec<&str> = capabilities
            .and_then(|c| c.drop.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert!(
            dropped.contains(&"ALL"),
            "{at}: field `{path}.securityContext.capabilities.drop`: must drop ALL, found {dropped:?}"
        );

        let resources = gateway.resources.as_ref();
        let limit = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("hugepages-2Mi"))
            .unwrap_or_else(|| {
                panic!("{at}: field `{path}.resources.limits.hugepages-2Mi`: missing (the UMEM)")
            });
        let request = resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("hugepages-2Mi"));
        assert!(
            request.is_none_or(|r| r == limit),
            "{at}: field `{path}.resources.requests.hugepages-2Mi`: {request:?} must equal the \
             limit {limit:?} (Kubernetes does not overcommit hugepages)"
        );

        let mounts = gateway.volume_mounts.as_deref().unwrap_or_default();
        let bpffs = mounts
            .iter()
            .find(|m| m.mount_path == "/sys/fs/bpf")
            .unwrap_or_else(|| panic!("{at}: field `{path}.volumeMounts`: nothing at /sys/fs/bpf"));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == bpffs.name)
            .unwrap_or_else(|| {
                panic!(
                    "{at}: field `spec.template.spec.volumes`: no volume {:?}",
                    bpffs.name
                )
            });
        assert_eq!(
            volume.host_path.as_ref().map(|h| h.path.as_str()),
            Some("/sys/fs/bpf"),
            "{at}: field `spec.template.spec.volumes` ({:?}): the host's /sys/fs/bpf",
            volume.name
        );

        let pre_stop = gateway.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
        let pre_stop =
            pre_stop.unwrap_or_else(|| panic!("{at}: field `{path}.lifecycle.preStop`: missing"));

        let args = gateway.args.as_deref().unwrap_or_default();
        let admin = flag_value(args, "--admin")
            .unwrap_or_else(|| panic!("{at}: field `{path}.args`: no --admin"));
        assert!(
            admin.ends_with(&format!(":{ADMIN_PORT}")),
            "{at}: field `{path}.args`: --admin {admin}: the probes expect port {ADMIN_PORT}"
        );
        for (name, probe) in [
            ("livenessProbe", &gateway.liveness_probe),
            ("readinessProbe", &gateway.readiness_probe),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{at}: field `{path}.{name}.httpGet`: missing"));
            assert_eq!(
                get.port,
                IntOrString::Int(ADMIN_PORT),
                "{at}: field `{path}.{name}.httpGet.port`: the admin server's port"
            );
        }

        // The kubelet must not kill a drain half way: the grace period covers
        // the preStop sleep and the drain timeout.
        let sleep = pre_stop.sleep.as_ref().map_or(0, |s| s.seconds);
        let drain: f64 = flag_value(args, "--drain-timeout").map_or(10.0, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{at}: field `{path}.args`: --drain-timeout {v:?}"))
        });
        let grace = pod.termination_grace_period_seconds.unwrap_or(30);
        let needed = sleep as f64 + drain;
        assert!(
            needed < grace as f64,
            "{at}: field `spec.template.spec.terminationGracePeriodSeconds`: {grace} s does not \
             cover the preStop sleep ({sleep} s) and --drain-timeout ({drain} s)"
        );

        // Every $(VAR) in the command line is defined: an undefined one is
        // passed on literally.
        let defined: BTreeSet<&str> = gateway
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        let command = gateway.command.as_deref().unwrap_or_default();
        for (i, arg) in args.iter().enumerate() {
            for name in env_references(arg) {
                assert!(
                    defined.contains(name),
                    "{at}: field `{path}.args[{i}]`: $({name}) is not in `{path}.env`"
                );
            }
        }
        for (i, arg) in command.iter().enumerate() {
            for name in env_references(arg) {
                assert!(
                    defined.contains(name),
                    "{at}: field `{path}.command[{i}]`: $({name}) is not in `{path}.env`"
                );
            }
        }
    }
}

/// The failure, if any, of one RBAC rule of the cluster role: wildcards
/// nowhere; reads anywhere; writes only to status subresources.
fn check_cluster_rule(at: &str, path: &str, rule: &PolicyRule) {
    let lists = [
        ("apiGroups", rule.api_groups.as_deref()),
        ("resources", rule.resources.as_deref()),
        ("resourceNames", rule.resource_names.as_deref()),
        ("nonResourceURLs", rule.non_resource_urls.as_deref()),
        ("verbs", Some(rule.verbs.as_slice())),
    ];
    for (field, values) in lists {
        for (j, value) in values.into_iter().flatten().enumerate() {
            assert!(
                !value.contains('*'),
                "{at}: field `{path}.{field}[{j}]`: wildcard {value:?}"
            );
        }
    }
    assert!(
        rule.non_resource_urls.is_none(),
        "{at}: field `{path}.nonResourceURLs`: the controller needs none"
    );
    let resources = rule.resources.as_deref().unwrap_or_default();
    assert!(
        !resources.is_empty(),
        "{at}: field `{path}.resources`: empty"
    );
    for (j, verb) in rule.verbs.iter().enumerate() {
        match verb.as_str() {
            "get" | "list" | "watch" => {}
            "update" | "patch" => {
                for (k, resource) in resources.iter().enumerate() {
                    assert!(
                        resource.ends_with("/status"),
                        "{at}: field `{path}.resources[{k}]`: {resource:?} gets {verb:?}, which \
                         only status subresources may"
                    );
                }
            }
            other => panic!(
                "{at}: field `{path}.verbs[{j}]`: {other:?} (the controller reads, and writes \
                 status only)"
            ),
        }
    }
}

#[test]
fn the_cluster_role_reads_and_writes_status_only() {
    let roles = objects::<ClusterRole>(RBAC, "ClusterRole");
    assert!(!roles.is_empty(), "no ClusterRole under deploy/");
    for (doc, role) in &roles {
        let at = doc.at();
        assert!(
            role.aggregation_rule.is_none(),
            "{at}: field `aggregationRule`: an aggregated role's rules are not these"
        );
        let rules = role.rules.as_deref().unwrap_or_default();
        assert!(!rules.is_empty(), "{at}: field `rules`: empty");
        for (i, rule) in rules.iter().enumerate() {
            check_cluster_rule(&at, &format!("rules[{i}]"), rule);
        }
    }
}

#[test]
fn the_namespaced_role_covers_the_leader_lease_only() {
    let roles = objects::<Role>(RBAC, "Role");
    assert!(!roles.is_empty(), "no Role under deploy/");
    for (doc, role) in &roles {
        let at = doc.at();
        assert_eq!(
            role.metadata.namespace.as_deref(),
            Some(NAMESPACE),
            "{at}: field `metadata.namespace`"
        );
        for (i, rule) in role.rules.iter().flatten().enumerate() {
            let path = format!("rules[{i}]");
            assert_eq!(
                rule.api_groups.as_deref().unwrap_or_default(),
                ["coordination.k8s.io"],
                "{at}: field `{path}.apiGroups`"
            );
            assert_eq!(
                rule.resources.as_deref().unwrap_or_default(),
                ["leases"],
                "{at}: field `{path}.resources`"
            );
            for (j, verb) in rule.verbs.iter().enumerate() {
                assert!(
                    ["get", "create", "update"].contains(&verb.as_str()),
                    "{at}: field `{path}.verbs[{j}]`: {verb:?} (leader election reads, creates \
                     and updates its Lease)"
                );
            }
            if let Some(names) = &rule.resource_names {
                assert_eq!(names, &[LEASE], "{at}: field `{path}.resourceNames`");
            }
        }
    }
}

/// Whether `subjects` name the gateway's ServiceAccount.
fn names_service_account(subjects: Option<&[Subject]>) -> bool {
    subjects.unwrap_or_default().iter().any(|s| {
        s.kind == "ServiceAccount"
            && s.name == SERVICE_ACCOUNT
            && s.namespace.as_deref() == Some(NAMESPACE)
    })
}

#[test]
fn the_bindings_grant_the_roles_to_the_gateways_service_account() {
    let accounts = objects::<ServiceAccount>("v1", "ServiceAccount");
    assert!(
        accounts.iter().any(|(_, a)| {
            a.metadata.name.as_deref() == Some(SERVICE_ACCOUNT)
                && a.metadata.namespace.as_deref() == Some(NAMESPACE)
        }),
        "deploy/: no ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}"
    );

    let cluster_roles: BTreeSet<String> = objects::<ClusterRole>(RBAC, "ClusterRole")
        .into_iter()
        .filter_map(|(_, r)| r.metadata.name)
        .collect();
    let bindings = objects::<ClusterRoleBinding>(RBAC, "ClusterRoleBinding");
    assert!(!bindings.is_empty(), "no ClusterRoleBinding under deploy/");
    for (doc, binding) in &bindings {
        let at = doc.at();
        assert_eq!(
            binding.role_ref.kind, "ClusterRole",
            "{at}: field `roleRef.kind`"
        );
        assert!(
            cluster_roles.contains(&binding.role_ref.name),
            "{at}: field `roleRef.name`: no ClusterRole {:?} under deploy/",
            binding.role_ref.name
        );
        assert!(
            names_service_account(binding.subjects.as_deref()),
            "{at}: field `subjects`: not ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}"
        );
    }

    let roles: BTreeSet<String> = objects::<Role>(RBAC, "Role")
        .into_iter()
        .filter_map(|(_, r)| r.metadata.name)
        .collect();
    let bindings = objects::<RoleBinding>(RBAC, "RoleBinding");
    assert!(!bindings.is_empty(), "no RoleBinding under deploy/");
    for (doc, binding) in &bindings {
        let at = doc.at();
        assert_eq!(
            binding.metadata.namespace.as_deref(),
            Some(NAMESPACE),
            "{at}: field `metadata.namespace`"
        );
        assert_eq!(binding.role_ref.kind, "Role", "{at}: field `roleRef.kind`");
        assert!(
            roles.contains(&binding.role_ref.name),
            "{at}: field `roleRef.name`: no Role {:?} under deploy/",
            binding.role_ref.name
        );
        assert!(
            names_service_account(binding.subjects.as_deref()),
            "{at}: field `subjects`: not ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}"
        );
    }
}

#[test]
fn the_gateway_class_names_rauta_as_its_controller() {
    let classes = objects::<GatewayClass>(GATEWAY_API, "GatewayClass");
    assert!(
        classes
            .iter()
            .any(|(_, c)| c.metadata.name.as_deref() == Some("rauta")),
        "deploy/: no GatewayClass rauta"
    );
    for (doc, class) in &classes {
        assert_eq!(
            class.spec.controller_name,
            CONTROLLER_NAME,
            "{}: field `spec.controllerName`",
            doc.at()
        );
    }
    // The example's Gateways are of that class.
    for (doc, gateway) in objects::<Gateway>(GATEWAY_API, "Gateway") {
        assert_eq!(
            gateway.spec.gateway_class_name,
            "rauta",
            "{}: field `spec.gatewayClassName`",
            doc.at()
        );
    }
}

#[test]
fn the_kind_config_is_a_cluster_with_a_gateway_node() {
    let file = "deploy/kind/cluster.yaml";
    let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
    assert_eq!(value["kind"], "Cluster", "{file}: field `kind`");
    assert_eq!(
        value["apiVersion"], "kind.x-k8s.io/v1alpha4",
        "{file}: field `apiVersion`"
    );
    let nodes = value["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: field `nodes`: missing"));
    assert!(
        nodes
            .iter()
            .any(|n| n["labels"]["rauta.dev/gateway"] == "true"),
        "{file}: field `nodes`: no node labelled rauta.dev/gateway: \"true\" (the DaemonSet's \
         nodeSelector)"
    );
}
