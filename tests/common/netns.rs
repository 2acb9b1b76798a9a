//! A network namespace of the test's own, reached from the host over a veth pair in
//! 198.18.0.0/15 (the benchmarking range: never a real neighbour), with a TCP server in it that
//! greets every connection with `hello-from-testnet`. Workloads' outbound traffic is tested
//! against it, so no test sends anything beyond this machine.

use std::time::Duration;

/// A network namespace of the test's own with a TCP server in it, reached from the host over a
/// veth pair: the workload's outbound traffic gets there.
pub struct TestNet {
    name: String,
    pub server: std::net::SocketAddr,
}

impl TestNet {
    pub fn new() -> TestNet {
        let n: u8 = rand::random::<u8>() % 60;
        let name = format!("pgt{:08x}", rand::random::<u32>());
        let host_if = format!("{}h", &name[..11]);
        let ns_if = format!("{}n", &name[..11]);
        let host_ip = format!("198.18.{n}.1");
        let ns_ip = format!("198.18.{n}.2");
        let sh = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        sh(&["netns", "add", &name]);
        // From here on a failure removes what was made.
        let mut net = TestNet {
            name: name.clone(),
            server: "0.0.0.0:0".parse().unwrap(),
        };
        sh(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        sh(&["link", "set", &ns_if, "netns", &name]);
        sh(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        sh(&["link", "set", &host_if, "up"]);
        sh(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        sh(&["-n", &name, "link", "set", &ns_if, "up"]);
        sh(&["-n", &name, "link", "set", "lo", "up"]);
        // A server in the namespace: a thread that enters it and answers every connection.
        let ns_path = format!("/run/netns/{name}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write;
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&ns_path).unwrap();
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = std::net::TcpListener::bind((ns_ip.as_str(), 0)).unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(b"hello-from-testnet\n");
            }
        });
        net.server = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &format!("{}h", &self.name[..11])])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
