//! A small blocking CRI v1 client (what the kubelet would call), over containerd's socket.

use std::path::Path;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint};

/// The client and the runtime that drives it.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// A failed CRI call, with containerd's message.
pub type CriResult<T> = Result<T, tonic::Status>;

impl Cri {
    /// Connects to containerd's CRI service.
    pub fn connect(sock: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let uri = format!("unix://{}", sock.display());
        let channel = rt
            .block_on(Endpoint::from_shared(uri).unwrap().connect())
            .expect("connecting to containerd's CRI service");
        Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// The runtime's name and version (`Version`).
    pub fn version(&mut self) -> CriResult<VersionResponse> {
        let c = &mut self.client;
        self.rt
            .block_on(c.version(VersionRequest::default()))
            .map(|r| r.into_inner())
    }

    /// Whether the runtime and network are ready (`Status`).
    pub fn ready(&mut self) -> bool {
        let c = &mut self.client;
        let Ok(s) = self.rt.block_on(c.status(StatusRequest::default())) else {
            return false;
        };
        s.into_inner()
            .status
            .map(|s| s.conditions.iter().all(|c| c.status))
            .unwrap_or(false)
    }

    /// `RunPodSandbox`; the sandbox id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> CriResult<String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let c = &mut self.client;
        self.rt
            .block_on(c.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// `CreateContainer`; the container id.
    pub fn create(
        &mut self,
        pod: &str,
        config: ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> CriResult<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let c = &mut self.client;
        self.rt
            .block_on(c.create_container(req))
            .map(|r| r.into_inner().container_id)
    }

    /// `StartContainer`.
    pub fn start(&mut self, id: &str) -> CriResult<()> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        let c = &mut self.client;
        self.rt.block_on(c.start_container(req)).map(drop)
    }

    /// `ExecSync`: exit code and stdout.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> CriResult<(i32, String)> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        let c = &mut self.client;
        self.rt.block_on(c.exec_sync(req)).map(|r| {
            let r = r.into_inner();
            (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
        })
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&mut self, id: &str) -> CriResult<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let c = &mut self.client;
        self.rt.block_on(c.stop_pod_sandbox(req)).map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod(&mut self, id: &str) -> CriResult<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let c = &mut self.client;
        self.rt.block_on(c.remove_pod_sandbox(req)).map(drop)
    }
}

/// A pod's config: a name, a uid, a log directory.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(own_pid_namespace()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the kubelet asks for a pod without `shareProcessNamespace`: a pid namespace per
/// container; network, IPC and UTS shared with the pod.
fn own_pid_namespace() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    }
}

/// A container of `image` running `command`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(own_pid_namespace()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
