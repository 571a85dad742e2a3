//! `Create`: the first container boots the pod's VM, later ones join it.

use super::*;

impl Inner {
    pub(super) fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        self.setup
            .as_ref()
            .map_err(|e| TaskError::Precondition(e.clone()))?;
        let _one_at_a_time = self.create.lock().unwrap_or_else(|e| e.into_inner());
        let id = req.id.as_str();
        moat_agent::container::spec_check::validate_id(id).map_err(invalid)?;
        if self.state().containers.contains_key(id) {
            return Err(TaskError::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        let options = req.options.as_ref();
        let cfg_path = spec::config_path(
            options.map(|o| o.type_url.as_str()).unwrap_or_default(),
            options.map(|o| o.value.as_slice()).unwrap_or_default(),
        )
        .map_err(invalid)?;
        let cfg = match cfg_path {
            Some(p) => ShimConfig::load(&p).map_err(invalid)?,
            None => ShimConfig::default(),
        };
        let bundle = Path::new(&req.bundle);
        if !bundle.is_dir() {
            return Err(invalid(format!(
                "bundle {}: no such directory",
                bundle.display()
            )));
        }
        let spec = moat_protocol::spec::load_spec(&bundle.join("config.json"))
            .map_err(|e| invalid(format!("bundle {}: {e}", bundle.display())))?;
        crate::bundle::check_spec(&spec).map_err(invalid)?;
        let role = spec::role(&spec);
        let rootfs = mount_rootfs(bundle, req)?;
        let undo_rootfs = |r: &Option<PathBuf>| {
            if let Some(r) = r {
                let _ = nix::mount::umount2(r, nix::mount::MntFlags::MNT_DETACH);
            }
        };
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let owner = role == Role::Owner;
        let booted = match self.pod_vm(id, &role, &spec, &cfg) {
            Ok(b) => b,
            Err(e) => {
                undo_rootfs(&rootfs);
                return Err(e);
            }
        };
        let (vm, owner_pid) = booted;
        let init = Arc::new(Proc::new(id, None, stdio.clone(), None));
        let c = Container {
            bundle: req.bundle.clone(),
            spec: spec.clone(),
            rootfs: rootfs.clone(),
            init: Arc::clone(&init),
            execs: HashMap::new(),
            paused: false,
            owner,
        };
        let st = self.oci_state(id, &c, crate::state::Status::Creating);
        self.state().containers.insert(id.into(), c);
        let created = self.create_in_guest(&vm, id, bundle, &spec, owner_pid, &stdio, &st);
        let started = match created {
            Ok(s) => s,
            Err(e) => {
                let _ = vm.call(
                    "DeleteContainer",
                    Request::DeleteContainer {
                        id: id.into(),
                        force: true,
                    },
                );
                vm::unshare_container(&vm.share, id);
                self.state().containers.remove(id);
                undo_rootfs(&rootfs);
                if owner {
                    self.state().vm = None;
                    vm.shutdown(Duration::from_secs(5));
                }
                return Err(e);
            }
        };
        if owner {
            self.state().owner_pid = Some(started);
        }
        self.publish(TaskCreate {
            container_id: id.into(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: self.pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse {
            pid: self.pid,
            ..Default::default()
        })
    }

    /// The VM the container runs in (booting it for an owner) and the guest pid of the
    /// owner's init for a member.
    fn pod_vm(
        self: &Arc<Self>,
        id: &str,
        role: &Role,
        spec: &Spec,
        cfg: &ShimConfig,
    ) -> Result<(Arc<PodVm>, Option<u32>)> {
        let (vm, owner_pid) = {
            let st = self.state();
            (st.vm.clone(), st.owner_pid)
        };
        match (role, vm) {
            (Role::Member { sandbox_id }, Some(vm)) => {
                let st = self.state();
                let ok = st.containers.get(sandbox_id).is_some_and(|c| c.owner);
                drop(st);
                if !ok || owner_pid.is_none() {
                    return Err(TaskError::Precondition(format!(
                        "container {id} belongs to pod sandbox {sandbox_id}, which this shim does not run"
                    )));
                }
                Ok((vm, owner_pid))
            }
            (Role::Member { sandbox_id }, None) => Err(TaskError::Precondition(format!(
                "container {id} belongs to pod sandbox {sandbox_id}, whose VM is not running"
            ))),
            (Role::Owner, Some(_)) => Err(TaskError::Precondition(format!(
                "container {id} needs a VM of its own, and this shim already runs one"
            ))),
            (Role::Owner, None) => {
                let moat = self
                    .setup
                    .as_ref()
                    .map_err(|e| TaskError::Precondition(e.clone()))?;
                let size = moat.vm_size(spec);
                let vmm = moat
                    .backend
                    .choose(crate::host::detect_kvm())
                    .map_err(TaskError::Precondition)?
                    .vmm;
                let vm_cfg = VmConfig {
                    paths: moat.guest_paths(),
                    vmm,
                    vcpus: cfg.vcpus.unwrap_or(size.vcpus),
                    memory_mib: cfg.memory_mib.unwrap_or(size.memory_mib),
                };
                let weak = Arc::downgrade(self);
                let on_exit = Box::new(move || {
                    if let Some(me) = weak.upgrade() {
                        me.on_guest_gone();
                    }
                });
                let dir = crate::shim::pod_dir(&self.namespace, id);
                let vm = PodVm::boot(&dir, vm_cfg, on_exit)
                    .map_err(|e| TaskError::Internal(format!("booting the pod's VM: {e}")))?;
                if let Err(e) = self.watch_events(&vm) {
                    vm.shutdown(Duration::from_secs(5));
                    return Err(e);
                }
                self.state().vm = Some(Arc::clone(&vm));
                Ok((vm, None))
            }
        }
    }

    /// Shares the rootfs and volumes, runs the host hooks, creates the container in the guest
    /// and connects its stdio; the init's guest pid.
    #[allow(clippy::too_many_arguments)]
    fn create_in_guest(
        &self,
        vm: &PodVm,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        owner_pid: Option<u32>,
        stdio: &Stdio,
        st: &crate::state::ContainerState,
    ) -> Result<u32> {
        let (guest_spec, rootfs) =
            crate::sandbox::share::prepare(&vm.share, id, bundle, spec).map_err(invalid)?;
        let guest_spec = spec::guest_namespaces(&guest_spec, owner_pid).map_err(invalid)?;
        crate::hooks::run_host(spec, "createRuntime", st, bundle).map_err(invalid)?;
        crate::hooks::run_host(spec, "prestart", st, bundle).map_err(invalid)?;
        let req = CreateContainer {
            id: id.into(),
            spec: Box::new(guest_spec),
            rootfs,
            stdio: stdio.request(),
        };
        let started = match vm.call("CreateContainer", Request::CreateContainer(req))? {
            Response::Started(s) => s,
            other => {
                return Err(TaskError::Internal(format!(
                    "unexpected answer to CreateContainer: {other:?}"
                )))
            }
        };
        let pumps = io::start(&vm.uds, started.stdio, stdio).map_err(invalid)?;
        self.proc(id, "")?.attach(started.pid, pumps);
        Ok(started.pid)
    }
}

/// Mounts containerd's rootfs mounts (a snapshot) on `<bundle>/rootfs`, in the shim's own
/// mount namespace; the mount point if anything was mounted.
fn mount_rootfs(bundle: &Path, req: &CreateTaskRequest) -> Result<Option<PathBuf>> {
    if req.rootfs.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| invalid(format!("rootfs: creating {}: {e}", target.display())))?;
    for m in &req.rootfs {
        mount_one(&m.type_, &m.source, &m.options, &target).map_err(|e| {
            let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
            invalid(format!("rootfs: mounting {} {}: {e}", m.type_, m.source))
        })?;
    }
    Ok(Some(target))
}

/// One containerd mount (`bind` with `rbind`/`ro`, `overlay` with its dirs, ...). The
/// crate's `mount_rootfs` forks and waits through its reaper, which this shim turns off.
fn mount_one(typ: &str, source: &str, options: &[String], target: &Path) -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags.remove(MsFlags::MS_RDONLY),
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "defaults" => {}
            other => data.push(other),
        }
    }
    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let fstype = (!typ.is_empty() && typ != "bind").then_some(typ);
    mount(Some(source), target, fstype, flags, data)?;
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        // A bind ignores MS_RDONLY until remounted.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )?;
    }
    Ok(())
}
