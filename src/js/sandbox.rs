//! What a worker gives up once it has its actions: memory beyond its limit (`RLIMIT_DATA`),
//! core dumps, and, through a seccomp filter (which also sets `no_new_privs`), every system
//! call that opens a file, makes a socket, starts a program or changes the file system.
//!
//! The filter is a deny list answering `EPERM`, not an allow list: boa, glibc and std need an
//! open-ended set of calls for memory, time and threads, and a call the list forgets fails
//! closed only if it is on it. What a worker keeps is reading and writing the descriptors it
//! already has: its socket to the host and stderr.

use std::collections::BTreeMap;

/// What [`apply`] managed; reported by `js-worker --probe` and logged by a worker when a part
/// is missing.
pub(crate) struct Applied {
    memory: Result<(), String>,
    filter: Result<(), String>,
}

impl Applied {
    pub(crate) fn describe(&self) -> serde_json::Value {
        let part = |r: &Result<(), String>| match r {
            Ok(()) => "applied".to_string(),
            Err(e) => e.clone(),
        };
        serde_json::json!({ "memory": part(&self.memory), "seccomp": part(&self.filter) })
    }

    /// A part that could not be applied, in words for the host's log.
    pub(crate) fn problem(&self) -> Option<String> {
        match (&self.memory, &self.filter) {
            (Err(e), _) => Some(format!("memory limit not applied: {e}")),
            (_, Err(e)) => Some(format!("seccomp filter not applied: {e}")),
            _ => None,
        }
    }
}

/// Caps the process's data at `memory_limit` bytes (0: no cap), turns off core dumps and
/// installs the filter on every thread.
pub(crate) fn apply(memory_limit: u64) -> Applied {
    let memory = if memory_limit == 0 {
        Ok(())
    } else {
        rlimit::setrlimit(rlimit::Resource::DATA, memory_limit, memory_limit)
            .map_err(|e| e.to_string())
    };
    let _ = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0);
    Applied {
        memory,
        filter: install_filter(),
    }
}

/// Asks the kernel to SIGKILL this worker when the host dies, so a run stuck in a loop never
/// outlives it. Done first thing, before the worker reads anything.
pub(crate) fn die_with_host() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// The calls a worker never needs after start-up.
fn denied() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_open_by_handle_at,
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kill,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_fchmodat,
        libc::SYS_fchownat,
        libc::SYS_truncate,
        libc::SYS_chdir,
        libc::SYS_chroot,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setuid,
        libc::SYS_setgid,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_open,
        libc::SYS_creat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_mknod,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
    ]);
    calls
}

fn install_filter() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp support for {}: {e}", std::env::consts::ARCH))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = denied()
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let program = BpfProgram::try_from(filter).map_err(|e| e.to_string())?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
}
