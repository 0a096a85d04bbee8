use super::*;
use clap::CommandFactory;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("knit-init").chain(args.iter().copied()))
}

fn cidr(text: &str) -> Cidr {
    text.parse().expect("test CIDR is valid")
}

#[test]
fn command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn defaults_follow_knit_conventions() {
    let cli = parse(&[]).expect("no arguments are valid");
    assert_eq!(
        cli.capture_config().expect("defaults are valid"),
        CaptureConfig::default()
    );
    assert!(!cli.dry_run && !cli.cleanup && !cli.capture_dns && !cli.allow_backend_mismatch);
    assert_eq!(cli.ipv6, Ipv6Mode::Auto);
    assert_eq!(cli.netns, None);
    assert_eq!(
        cli.iptables(Family::Ipv6),
        Iptables::new(Family::Ipv6, "ip6tables-save", "ip6tables-restore")
    );
}

#[test]
fn options_reach_the_capture_config() {
    let cli = parse(&[
        "--proxy-uid",
        "2000",
        "--proxy-gid",
        "3000",
        "--outbound-port",
        "16001",
        "--inbound-port",
        "16006",
        "--include-inbound-ports",
        "8080,9090",
        "--exclude-inbound-ports",
        "22,8443",
        "--include-outbound-cidrs",
        "10.0.0.0/8,2001:db8::/32",
        "--exclude-outbound-cidrs",
        "10.96.0.0/12",
        "--exclude-outbound-ports",
        "5432",
        "--exclude-interfaces",
        "eth1,tun+",
        "--capture-dns",
        "--ipv6",
        "on",
        "--netns",
        "/var/run/netns/pod",
        "--allow-backend-mismatch",
        "--dry-run",
        "--cleanup",
    ])
    .expect("valid arguments");
    assert_eq!(
        cli.capture_config().expect("valid"),
        CaptureConfig {
            proxy_uid: 2000,
            proxy_gid: 3000,
            outbound_port: 16001,
            inbound_port: 16006,
            mesh_port: 15008,
            include_inbound_ports: Selection::Only(vec![8080, 9090]),
            exclude_inbound_ports: vec![22, 8443],
            include_outbound_cidrs: Selection::Only(vec![
                cidr("10.0.0.0/8"),
                cidr("2001:db8::/32")
            ]),
            exclude_outbound_cidrs: vec![cidr("10.96.0.0/12")],
            exclude_outbound_ports: vec![5432],
            exclude_interfaces: vec!["eth1".into(), "tun+".into()],
            capture_dns: true,
        }
    );
    assert!(cli.dry_run && cli.cleanup && cli.allow_backend_mismatch);
    assert_eq!(cli.ipv6, Ipv6Mode::On);
    assert_eq!(cli.netns, Some(PathBuf::from("/var/run/netns/pod")));

    let empty = parse(&[
        "--exclude-inbound-ports",
        "",
        "--include-inbound-ports",
        "",
        "--include-outbound-cidrs",
        "",
    ])
    .expect("empty lists are valid");
    let config = empty.capture_config().expect("valid");
    assert!(config.exclude_inbound_ports.is_empty());
    assert!(config.include_inbound_ports.is_nothing());
    assert!(config.include_outbound_cidrs.is_nothing());
}

#[test]
fn hidden_tool_overrides_replace_one_family_at_a_time() {
    let cli = parse(&["--ip6tables-restore", "/tmp/failing-restore"]).expect("valid");
    assert_eq!(cli.iptables(Family::Ipv4), Iptables::ipv4());
    assert_eq!(
        cli.iptables(Family::Ipv6),
        Iptables::new(Family::Ipv6, "ip6tables-save", "/tmp/failing-restore")
    );
    let help = Cli::command().render_long_help().to_string();
    assert!(!help.contains("--ip6tables-restore"), "{help}");
    assert!(help.contains("--include-outbound-cidrs"), "{help}");
}

#[test]
fn bad_values_are_rejected_with_the_option_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--outbound-port", "0"], "--outbound-port"),
        (&["--inbound-port", "65536"], "--inbound-port"),
        (&["--proxy-uid=-1"], "--proxy-uid"),
        (&["--proxy-gid", "root"], "--proxy-gid"),
        (
            &["--exclude-inbound-ports", "80,web"],
            "`web` is not a port number",
        ),
        (
            &["--include-inbound-ports", "*,80"],
            "--include-inbound-ports",
        ),
        (
            &["--include-outbound-cidrs", "10.0.0.1/8"],
            "--include-outbound-cidrs",
        ),
        (
            &["--exclude-outbound-cidrs", "nope"],
            "`nope` is not an IPv4 or IPv6 address",
        ),
        (&["--exclude-outbound-ports", "0"], "is port 0"),
        (&["--exclude-interfaces", "eth 0"], "--exclude-interfaces"),
        (&["--ipv6", "maybe"], "--ipv6"),
    ];
    for (args, fragment) in cases {
        let err = parse(args).expect_err("invalid arguments");
        let message = err.to_string();
        assert!(message.contains(fragment), "{args:?}: {message}");
    }
    let same_ports = parse(&["--inbound-port", "15001"]).expect("parses");
    let err = same_ports.capture_config().expect_err("ports collide");
    assert!(err.to_string().contains("--inbound-port"), "{err}");
}
