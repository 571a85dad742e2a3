//! Container requests: from protocol messages to the container manager and back.

use std::sync::Arc;

use moat_protocol::{Request, Response};

use crate::container::manager::Manager;

/// Carries out one container request. `Hello`, `Shutdown` and `SubscribeEvents` are the
/// server's; anything else lands here.
pub fn dispatch(m: &Arc<Manager>, request: Request) -> Response {
    let r = match request {
        Request::CreateContainer(req) => m.create(req).map(Response::Started),
        Request::StartContainer { id } => m.start(&id).map(|()| Response::Ok),
        Request::ExecProcess(req) => m.exec(req).map(Response::Started),
        Request::SignalProcess {
            process,
            signal,
            all,
        } => m.signal(&process, signal, all).map(|()| Response::Ok),
        Request::WaitProcess(p) => m.wait(&p).map(|status| Response::Exited { status }),
        Request::State { id } => m.state(&id).map(Response::State),
        Request::ListProcesses { id } => m.pids(&id).map(Response::Processes),
        Request::Stats { id } => m.stats(&id).map(|s| Response::Stats(Box::new(s))),
        Request::UpdateResources { id, resources } => {
            m.update(&id, &resources).map(|()| Response::Ok)
        }
        Request::PauseContainer { id } => m.set_paused(&id, true).map(|()| Response::Ok),
        Request::ResumeContainer { id } => m.set_paused(&id, false).map(|()| Response::Ok),
        Request::ResizeTty {
            process,
            rows,
            cols,
        } => m.resize(&process, rows, cols).map(|()| Response::Ok),
        Request::CloseStdin(p) => m.close_stdin(&p).map(|()| Response::Ok),
        Request::DeleteProcess(p) => m.delete_exec(&p).map(|()| Response::Ok),
        Request::DeleteContainer { id, force } => m.delete(&id, force).map(|()| Response::Ok),
        Request::Hello { .. } | Request::Shutdown | Request::SubscribeEvents => {
            Err(moat_protocol::ErrorReply::new(
                moat_protocol::ErrorKind::Internal,
                "connection-level request routed to the container dispatcher",
            ))
        }
    };
    r.unwrap_or_else(Response::Error)
}
