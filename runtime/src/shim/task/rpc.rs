//! The ttrpc `Task` trait: each call logged when it fails, mapped to a ttrpc status.

use super::*;

fn log_err<T>(what: &str, id: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        match e {
            // containerd probes with these (a delete after a failed create, a kill of an
            // exited process); they are answers, not failures.
            TaskError::NotFound(_) => containerd_shim::debug!("{what} {id}: {e}"),
            _ => containerd_shim::error!("{what} {id}: {e}"),
        }
        e.into()
    })
}

impl containerd_shim::Task for Service {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        log_err("state", &req.id, self.0.state_of(&req))
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        containerd_shim::info!("create {} (bundle {})", req.id, req.bundle);
        log_err("create", &req.id, self.0.create(&req))
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        log_err("start", &req.id, self.0.start(&req))
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        log_err("delete", &req.id, self.0.delete(&req))
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        log_err("pids", &req.id, self.0.pids(&req))
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        log_err("pause", &req.id, self.0.set_paused(&req.id, true)).map(|()| Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        log_err("resume", &req.id, self.0.set_paused(&req.id, false)).map(|()| Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        let e = TaskError::Unsupported(
            "checkpoint is not supported by moat: a container's state lives inside its microVM"
                .into(),
        );
        log_err("checkpoint", &req.id, Err(e))
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        log_err("kill", &req.id, self.0.kill(&req)).map(|()| Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        log_err("exec", &req.id, self.0.exec(&req)).map(|()| Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let r = self.0.proc(&req.id, &req.exec_id).and_then(|p| {
            self.0.call(
                "ResizeTty",
                Request::ResizeTty {
                    process: p.process_ref(),
                    rows: req.height.min(u16::MAX.into()) as u16,
                    cols: req.width.min(u16::MAX.into()) as u16,
                },
            )
        });
        log_err("resize", &req.id, r).map(|_| Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let r = self.0.proc(&req.id, &req.exec_id).map(|p| {
            if req.stdin {
                p.close_stdin();
            }
        });
        log_err("close_io", &req.id, r).map(|()| Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let r = crate::shim::convert::resources(req.resources.as_ref())
            .map_err(invalid)
            .and_then(|res| {
                self.0.call(
                    "UpdateResources",
                    Request::UpdateResources {
                        id: req.id.clone(),
                        resources: Box::new(res),
                    },
                )
            });
        log_err("update", &req.id, r).map(|_| Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let p = log_err("wait", &req.id, self.0.proc(&req.id, &req.exec_id))?;
        let (status, at) = p.wait();
        Ok(WaitResponse {
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let r = self
            .0
            .call("Stats", Request::Stats { id: req.id.clone() })
            .and_then(|r| match r {
                Response::Stats(s) => Ok(StatsResponse {
                    stats: MessageField::some(crate::shim::convert::metrics_any(&s)),
                    ..Default::default()
                }),
                other => Err(TaskError::Internal(format!("unexpected answer: {other:?}"))),
            });
        log_err("stats", &req.id, r)
    }

    fn connect(&self, _: &TtrpcContext, _: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: self.0.pid,
            task_pid: self.0.pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        self.0.shutdown();
        Ok(Empty::new())
    }
}
