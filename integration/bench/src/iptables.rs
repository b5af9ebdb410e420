//! iptables enforcing the same allow rules as a Weir policy, for the
//! `policy-rules` comparison: a uniquely named chain (`WBENCH-<pid>`) in the
//! filter table of a bench namespace, jumped to from INPUT for one interface
//! after an ESTABLISHED,RELATED accept (so only new connections walk it, as
//! only new connections take a Weir policy lookup), holding the allow rules
//! in order and a final DROP. Owns that chain and those two INPUT rules; the
//! [`Chain`] guard removes them on drop. Only ever runs inside a namespace
//! the bench made (`ip netns exec`), never in the machine's own.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use weir_integration::netns;

/// Which iptables flavour writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `iptables-nft` (nf_tables underneath; Debian's default `iptables`).
    Nft,
    /// `iptables-legacy` (x_tables).
    Legacy,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
}

/// One allow rule: TCP from `source` (an address or CIDR) to `dport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptRule {
    pub source: String,
    pub dport: u16,
}

/// The chain's name for this process (iptables allows 28 characters).
pub fn chain_name() -> String {
    format!("WBENCH-{}", std::process::id())
}

/// The two INPUT rules that lead new connections on `iface` into `chain`.
fn input_rules(chain: &str, iface: &str) -> [String; 2] {
    [
        format!("INPUT -i {iface} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
        format!("INPUT -i {iface} -j {chain}"),
    ]
}

/// The `iptables-restore --noflush` input that creates `chain` with `rules`
/// in order and a final DROP, and hooks it into INPUT for `iface`.
pub fn restore_text(chain: &str, iface: &str, rules: &[AcceptRule]) -> String {
    let mut out = String::with_capacity(64 * (rules.len() + 8));
    out.push_str("*filter\n");
    out.push_str(&format!(":{chain} - [0:0]\n"));
    for r in rules {
        out.push_str(&format!(
            "-A {chain} -s {} -p tcp -m tcp --dport {} -j ACCEPT\n",
            r.source, r.dport
        ));
    }
    out.push_str(&format!("-A {chain} -j DROP\n"));
    for rule in input_rules(chain, iface) {
        out.push_str(&format!("-A {rule}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// The packet count of one `iptables -L CHAIN N -v -x -n` line.
pub fn parse_packets(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// An installed chain; dropping it removes the chain and its INPUT rules.
#[derive(Debug)]
pub struct Chain {
    netns: String,
    backend: Backend,
    name: String,
    iface: String,
    /// Rules before the DROP (the DROP is rule `len + 1`).
    len: usize,
}

impl Chain {
    /// Installs `rules` in namespace `netns` (a name under /run/netns).
    pub fn install(
        netns: &str,
        backend: Backend,
        iface: &str,
        rules: &[AcceptRule],
    ) -> Result<Chain> {
        let chain = Chain {
            netns: netns.to_string(),
            backend,
            name: chain_name(),
            iface: iface.to_string(),
            len: rules.len(),
        };
        let text = restore_text(&chain.name, iface, rules);
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, backend.restore(), "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} in {netns}", backend.restore()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .with_context(|| format!("writing rules to {}", backend.restore()))?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            // Whatever half got in goes with the guard.
            drop(chain);
            bail!(
                "{} failed ({}): {}",
                backend.restore(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // A connection's conntrack entry lingers 10 s in CLOSE after its
        // RST, and a SYN that reuses the tuple within that time is tracked
        // as ESTABLISHED on the old entry: it would skip the chain. Churning
        // tens of thousands of connections a second through 28 000
        // ephemeral ports reuses tuples within seconds, which no real client
        // population does; with no CLOSE time every SYN is NEW and walks the
        // chain, as each one takes a Weir policy lookup. The namespace is
        // the bench's own and goes with it.
        netns::run_in(&netns::path(netns), || {
            netns::write_sysctl("net.netfilter.nf_conntrack_tcp_timeout_close", "0")
        })?
        .context("net.netfilter.nf_conntrack_tcp_timeout_close")?;
        Ok(chain)
    }

    /// Packets that matched rule `n` (1-based) of the chain.
    pub fn packets(&self, n: usize) -> Result<u64> {
        let out = self.iptables(&["-L", &self.name, &n.to_string(), "-v", "-x", "-n"])?;
        out.lines()
            .find_map(parse_packets)
            .with_context(|| format!("no counter in {out:?}"))
    }

    /// Packets accepted by the last allow rule (the probe's).
    pub fn probe_packets(&self) -> Result<u64> {
        self.packets(self.len)
    }

    /// Packets the final DROP took.
    pub fn dropped(&self) -> Result<u64> {
        self.packets(self.len + 1)
    }

    fn iptables(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, self.backend.iptables(), "-w"])
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.backend.iptables()))?;
        if !out.status.success() {
            bail!(
                "{} {} failed ({}): {}",
                self.backend.iptables(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Each step on its own: a missing INPUT rule must not keep the chain.
        let mut steps: Vec<Vec<String>> = input_rules(&self.name, &self.iface)
            .iter()
            .map(|r| {
                std::iter::once("-D".to_string())
                    .chain(r.split_whitespace().map(str::to_string))
                    .collect()
            })
            .collect();
        steps.push(vec!["-F".into(), self.name.clone()]);
        steps.push(vec!["-X".into(), self.name.clone()]);
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = self.iptables(&args) {
                tracing::warn!(error = %format!("{e:#}"), netns = %self.netns, "removing the bench's iptables rules");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::privileged;

    #[test]
    fn restore_text_has_every_rule_in_order_then_drop_then_the_hooks() {
        let rules = vec![
            AcceptRule {
                source: "10.202.0.0/32".into(),
                dport: 8000,
            },
            AcceptRule {
                source: "10.201.0.1/32".into(),
                dport: 9000,
            },
        ];
        let text = restore_text("WBENCH-1", "wb1", &rules);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "*filter",
                ":WBENCH-1 - [0:0]",
                "-A WBENCH-1 -s 10.202.0.0/32 -p tcp -m tcp --dport 8000 -j ACCEPT",
                "-A WBENCH-1 -s 10.201.0.1/32 -p tcp -m tcp --dport 9000 -j ACCEPT",
                "-A WBENCH-1 -j DROP",
                "-A INPUT -i wb1 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-A INPUT -i wb1 -j WBENCH-1",
                "COMMIT",
            ]
        );
        assert!(chain_name().len() <= 28, "iptables chain names are short");
    }

    #[test]
    fn a_chain_counts_what_it_allows_drops_the_rest_and_goes_away() {
        use crate::topo::{self, Pair};
        use std::net::{SocketAddr, TcpListener};
        use std::time::Duration;
        if !privileged("network namespaces, iptables") {
            return;
        }
        let pair = Pair::create().expect("creating the namespace pair");
        let ns_b = pair
            .b
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_string();
        let listener = netns::run_in(&pair.b, || {
            (
                TcpListener::bind("0.0.0.0:9000").expect("bind 9000"),
                TcpListener::bind("0.0.0.0:9001").expect("bind 9001"),
            )
        })
        .expect("listening in b");
        let connect = |port: u16| {
            let dst: SocketAddr = format!("{}:{port}", topo::ADDR_B).parse().expect("addr");
            netns::run_in(&pair.a, || {
                crate::conn::connect_once(dst, Duration::from_millis(300)).is_ok()
            })
            .expect("connecting from a")
        };
        for backend in [Backend::Nft, Backend::Legacy] {
            let rules = [
                AcceptRule {
                    source: "10.202.0.1/32".into(),
                    dport: 9001,
                },
                AcceptRule {
                    source: format!("{}/32", topo::ADDR_A),
                    dport: 9000,
                },
            ];
            let chain =
                Chain::install(&ns_b, backend, topo::IF_B, &rules).expect("installing the chain");
            assert!(connect(9000), "{backend:?}: the probe's rule allows 9000");
            assert!(
                !connect(9001),
                "{backend:?}: 9001 is allowed only from another peer"
            );
            assert_eq!(
                chain.probe_packets().expect("counter"),
                1,
                "{backend:?}: one SYN"
            );
            assert!(
                chain.dropped().expect("counter") >= 1,
                "{backend:?}: the DROP took the other SYN"
            );
            let close = netns::run_in(&pair.b, || {
                std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close")
            })
            .expect("reading in b")
            .expect("the sysctl");
            assert_eq!(close.trim(), "0");
            drop(chain);
            assert!(
                connect(9001),
                "{backend:?}: nothing filters once the chain is gone"
            );
            let listed = std::process::Command::new("ip")
                .args(["netns", "exec", &ns_b, backend.iptables(), "-S"])
                .output()
                .expect("iptables -S");
            let listed = String::from_utf8_lossy(&listed.stdout);
            assert!(
                !listed.contains(&chain_name()),
                "{backend:?}: the chain and its jumps are removed:\n{listed}"
            );
        }
        drop(listener);
    }

    #[test]
    fn counters_are_read_from_the_first_column() {
        let line = "    1234    56789 ACCEPT     6    --  *      *       10.0.0.1             0.0.0.0/0            tcp dpt:80";
        assert_eq!(parse_packets(line), Some(1234));
        assert_eq!(
            parse_packets("Chain WBT (0 references)"),
            None,
            "a header is not a counter"
        );
        assert_eq!(parse_packets(""), None);
    }
}
