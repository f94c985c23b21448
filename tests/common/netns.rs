//! Private network namespaces for tests: unique names, torn down on drop (processes inside
//! are killed first), never touching the host's own namespace beyond creating veth pairs
//! whose ends live only inside namespaces made here.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the test may use namespaces. Not root: the test fails, naming what it needs,
/// unless the person running it opted out with `ATHENA_SKIP_ROOT_TESTS=1` (then it is skipped,
/// loudly). A silent early return would count an unrun test as passed.
pub fn require_root(test: &str) -> bool {
    if nix_geteuid() == 0 {
        return true;
    }
    if std::env::var_os("ATHENA_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
        eprintln!(
            "\n*** SKIPPED {test}: needs root (network namespaces); ATHENA_SKIP_ROOT_TESTS=1 ***\n"
        );
        return false;
    }
    panic!(
        "{test}: needs root for network namespaces. Run as root (`sudo -E tests/run.sh`), \
         or set ATHENA_SKIP_ROOT_TESTS=1 to skip the root tests knowingly."
    );
}

fn nix_geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A network namespace named `at<pid>-<n>-<tag>` (short: interface-name rules do not apply,
/// but `ip netns` output stays readable).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("at{}-{}-{}", std::process::id(), n, tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside; panics with its output if it fails; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd(args[0])
            .args(&args[1..])
            .output()
            .expect("spawn ip netns exec");
        check(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside and returns its output whatever the exit status.
    pub fn try_run(&self, args: &[&str]) -> Output {
        self.cmd(args[0])
            .args(&args[1..])
            .output()
            .expect("spawn ip netns exec")
    }

    /// Adds an address to an interface in this namespace and brings it up.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        self.run(&["ip", "addr", "add", cidr, "dev", ifname]);
        self.run(&["ip", "link", "set", ifname, "up"]);
    }

    /// Moves the calling thread into this namespace (see [`enter_netns`]).
    pub fn enter_current_thread(&self) -> std::io::Result<()> {
        enter_netns(&self.name)
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        let h = std::thread::spawn(move || {
            enter_netns(&name).unwrap_or_else(|e| panic!("entering netns {name}: {e}"));
            f()
        });
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the named namespace. Network namespaces are per thread, and
/// a socket stays in the namespace it was opened in for its whole life, even when another
/// thread uses it: open sockets on a thread that entered, then use them anywhere.
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns on a valid, open fd; CLONE_NEWNET changes only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both up. Created inside `a`, so nothing ever
/// appears in the host namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    sh(&[
        "ip", "-n", &a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.run(&["ip", "link", "set", a_if, "up"]);
    b.run(&["ip", "link", "set", b_if, "up"]);
}

/// Runs a host command (only `ip netns ...`/`ip -n ...` style commands belong here).
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    check(args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(args: &[&str], out: &Output) {
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
