//! The kernel lab's suites: which test targets run in the guest, under which kernel, with which
//! environment, and how a FILTER selects their tests.

use std::collections::BTreeSet;

use super::debian::Series;

/// One kernel-lab suite: a test target run inside the guest.
#[derive(Debug, Clone, Copy)]
pub struct Suite {
    /// Cargo package (`-p`).
    pub package: &'static str,
    /// Integration-test target (`--test`).
    pub target: &'static str,
    /// Only tests whose name contains this run ("" = all of the target's tests).
    pub filter: &'static str,
    /// Also run `#[ignore]`d tests (the kernel-lab-only tests are ignored on the host).
    pub include_ignored: bool,
    /// Environment of the test binary on top of the lab's (it wins over what the host passes):
    /// the same target runs as several suites, e.g. once per load balancer.
    pub env: &'static [(&'static str, &'static str)],
    /// Test threads, if not the lab's default of 2 (a swarm of agents per test is all 2 vCPUs
    /// under TCG take: such tests run one at a time).
    pub threads: Option<u32>,
    /// Show what passing tests print (libtest `--show-output`): figures they measure.
    pub show_output: bool,
    /// Runs only when a FILTER names it (left out of a plain run, i.e. out of CI).
    pub on_request: bool,
    /// Tests (names containing one of these) that run only when a FILTER names them.
    pub tests_on_request: &'static [&'static str],
    /// The kernel the suite runs under.
    pub series: Series,
}

pub(super) const fn suite(
    package: &'static str,
    target: &'static str,
    filter: &'static str,
    include_ignored: bool,
) -> Suite {
    Suite {
        package,
        target,
        filter,
        include_ignored,
        env: &[],
        threads: None,
        show_output: false,
        on_request: false,
        tests_on_request: &[],
        series: Series::V6_1,
    }
}

impl Suite {
    /// The same suite with this environment.
    const fn with_env(self, env: &'static [(&'static str, &'static str)]) -> Suite {
        Suite { env, ..self }
    }

    /// The same suite, its tests one at a time.
    const fn one_at_a_time(self) -> Suite {
        Suite {
            threads: Some(1),
            ..self
        }
    }

    /// The same suite, showing what its passing tests print.
    const fn showing_output(self) -> Suite {
        Suite {
            show_output: true,
            ..self
        }
    }

    /// The same suite, run only when a FILTER names it.
    const fn on_request(self) -> Suite {
        Suite {
            on_request: true,
            ..self
        }
    }

    /// The same suite, these of its tests only when a FILTER names them.
    const fn with_tests_on_request(self, tests: &'static [&'static str]) -> Suite {
        Suite {
            tests_on_request: tests,
            ..self
        }
    }

    /// The same suite under another kernel series.
    const fn under(self, series: Series) -> Suite {
        Suite { series, ..self }
    }

    /// Whether `test` of this suite runs: FILTERs given, when one is part of
    /// `package/target::test` or `name::test`; none given, unless the suite or the test is on
    /// request.
    pub(super) fn selects(&self, test: &str, filters: &[String]) -> bool {
        if !test.contains(self.filter) {
            return false;
        }
        if filters.is_empty() {
            return !self.on_request && !self.tests_on_request.iter().any(|x| test.contains(x));
        }
        let keys = [
            format!("{}/{}::{test}", self.package, self.target),
            format!("{}::{test}", self.name()),
        ];
        filters
            .iter()
            .any(|f| keys.iter().any(|k| k.contains(f.as_str())))
    }

    /// "package/target", "package/target[filter]", then "{K=V ...}" with an environment and
    /// "@6.12" under a kernel other than 6.1: what the report shows and a FILTER is matched
    /// against (with "::test_name").
    pub(super) fn name(&self) -> String {
        let mut name = format!("{}/{}", self.package, self.target);
        if !self.filter.is_empty() {
            name.push_str(&format!("[{}]", self.filter));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            name.push_str(&format!("{{{}}}", env.join(" ")));
        }
        if self.series != Series::V6_1 {
            name.push_str(&format!("@{}", self.series.label()));
        }
        name
    }
}

/// The kernel lab's suites, in the order they run. Add one line per suite.
pub const SUITES: &[Suite] = &[
    // The lab harness's own tests under Debian's 6.1 kernel: every suite below builds its labs
    // with that harness, so in the CI run (whose time is budgeted) they run on request only:
    // `cargo xtask test-kernel lab/lab`.
    suite("lab", "lab", "", false).on_request(),
    // Tests that need IPVS, ESP, GCM: ignored on the host, run here.
    suite("lab", "kernel_lab", "", true),
    // The overlay suite under 6.1. Its crash test (a process killed at each step of a setup,
    // restarted) checks the process's recovery, not the kernel, and takes 170 s of TCG: it runs
    // on the host in every test run, here on request (`vxlan/lab::crash`); so does the full
    // bridge (1,023 namespaces and endpoints, the kernel's constant: `vxlan/lab::limits`).
    suite("vxlan", "lab", "", false).with_tests_on_request(&["crash::", "limits::"]),
    // The overlay fast path under 6.1, which has no TCX: its programs attach as cls_bpf
    // filters (forwarding, isolation, tcpdump on vxlan0, endpoints, an adopting restart), as
    // do the mesh shortcut's (which the ingress test then requires).
    suite("vxlan", "fastpath", "", false),
    // The mesh's eBPF shortcut under 6.1, as tc filters too.
    suite("vxlan", "lab", "ingress::", false).with_env(&[
        ("NETAGENT_FAST_PATH", "1"),
        ("NETAGENT_EXPECT_FAST_PATH", "1"),
    ]),
    // Its iperf3 figure (encrypted vs plain, relative only under TCG) runs on request
    // (`cargo xtask test-kernel encrypted_and_plain_iperf3`): once, with the host tests loading
    // the machine alongside, the guest locked up in it (iperf3 and ksoftirqd in soft lockup
    // for 10 minutes) and would have held the run to its 40-minute timeout. ESP on the wire,
    // rotation and fail-closed still run here every time.
    suite("vxlan", "esp", "", true).with_tests_on_request(&["encrypted_and_plain_iperf3"]),
    // The eBPF socket load balancer under Debian's 6.1 kernel, and IPVS (not on the host).
    // Under 6.1 what matters is that the programs load, attach, balance and stay pinned; the
    // tests of the balancer's own bookkeeping (changes one by one, refusals, shrinking: about
    // 90 s of TCG) and its 10,000-service scale test (50 s) run on the host in every test run,
    // here on request (e.g. `cargo xtask test-kernel ipvs/ebpf::changes_apply`).
    suite("ipvs", "ebpf", "", false).with_tests_on_request(&[
        "ten_thousand",
        "changes_apply_one_by_one",
        "bad_input_is_refused",
        "shrinking_keeps_open",
    ]),
    suite("ipvs", "ipvs", "", true).showing_output(),
    // An encrypted network end to end through the agents (keys, ESP on the wire, rotation).
    suite("netagent", "encrypted", "", true),
    // Service load balancing through the agents, with each load balancer (`--lb`).
    suite("netagent", "lb", "", false)
        .with_env(&[("NETAGENT_LB", "ipvs")])
        .one_at_a_time()
        .showing_output(),
    // The eBPF balancer's agent-level suite runs on the host kernel in every test run, and its
    // programs are loaded and exercised under 6.1 by ipvs/ebpf above; here (2.5 min of TCG) it
    // runs on request only: `cargo xtask test-kernel NETAGENT_LB=ebpf`.
    suite("netagent", "lb", "", false)
        .with_env(&[("NETAGENT_LB", "ebpf")])
        .one_at_a_time()
        .showing_output()
        .on_request(),
    // Under 6.12, which has TCX as well as ESP: the overlay fast path carries an encrypted
    // network's frames (ESP is added on the underlay side of vxlan0), and the agents' encrypted
    // network and encrypted ingress run with the fast path and the mesh's shortcut, which the
    // tests then require to be on (NETAGENT_EXPECT_FAST_PATH) instead of taking the fallback.
    suite("vxlan", "esp", "", true)
        .with_env(&[
            ("NETAGENT_FAST_PATH", "1"),
            ("NETAGENT_EXPECT_FAST_PATH", "1"),
        ])
        .with_tests_on_request(&[
            "encrypted_and_plain_iperf3",
            "on_a_kernel_without",
            "cannot_be_installed",
            "nothing_flows_in_plaintext",
        ])
        .under(Series::V6_12),
    suite("netagent", "encrypted", "", true)
        .with_env(&[("NETAGENT_EXPECT_FAST_PATH", "1")])
        .with_tests_on_request(&["on_a_kernel_without"])
        .under(Series::V6_12),
];

/// The test targets of the suites a plain run (CI) runs, as `--test` arguments take them.
pub fn default_targets() -> BTreeSet<&'static str> {
    SUITES
        .iter()
        .filter(|s| !s.on_request)
        .map(|s| s.target)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_unique() {
        let mut seen = BTreeSet::new();
        for s in SUITES {
            assert!(seen.insert(s.name()), "{s:?}");
        }
    }

    #[test]
    fn tests_on_request_run_only_when_named() {
        let s = suite("v", "lab", "", false).with_tests_on_request(&["crash::"]);
        let none: &[String] = &[];
        assert!(s.selects("overlay::two", none));
        assert!(!s.selects("crash::killed", none));
        assert!(s.selects("crash::killed", &["v/lab::crash".to_string()]));
        assert!(!s.selects("overlay::two", &["v/lab::crash".to_string()]));
        let r = suite("v", "lab", "", false)
            .with_env(&[("K", "v")])
            .on_request();
        assert!(!r.selects("overlay::two", none));
        assert!(r.selects("overlay::two", &["K=v}::overlay".to_string()]));
        assert!(!suite("v", "lab", "mtu", false).selects("overlay::two", none));
    }

    #[test]
    fn suite_names_show_filter_and_environment() {
        assert_eq!(suite("a", "b", "", false).name(), "a/b");
        assert_eq!(suite("a", "b", "x", false).name(), "a/b[x]");
        let s = suite("a", "b", "", false).with_env(&[("K", "v"), ("L", "w")]);
        assert_eq!(s.name(), "a/b{K=v L=w}");
    }
}
