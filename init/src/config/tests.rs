use super::*;

#[test]
fn port_lists_parse_or_name_the_bad_item() {
    let cases: &[(&str, Result<&[u16], &str>)] = &[
        ("", Ok(&[])),
        ("  ", Ok(&[])),
        ("15000", Ok(&[15000])),
        ("15000,15021,15090", Ok(&[15000, 15021, 15090])),
        (" 22 , 443 ", Ok(&[22, 443])),
        ("80,80,443,80", Ok(&[80, 443])),
        ("80,,443", Err("item 2 `` is not a port number")),
        ("80,http", Err("item 2 `http` is not a port number")),
        ("70000", Err("item 1 `70000` is not a port number")),
        ("-1", Err("item 1 `-1` is not a port number")),
        ("0", Err("item 1 is port 0")),
    ];
    for (text, expected) in cases {
        match (expected, parse_port_list(text)) {
            (Ok(ports), Ok(got)) => assert_eq!(&got, ports, "input `{text}`"),
            (Err(fragment), Err(message)) => assert!(
                message.contains(fragment),
                "input `{text}`: `{message}` lacks `{fragment}`"
            ),
            (expected, got) => panic!("input `{text}`: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn port_selections_distinguish_everything_nothing_and_a_list() {
    let cases: &[(&str, Result<Selection<u16>, &str>)] = &[
        ("*", Ok(Selection::All)),
        (" * ", Ok(Selection::All)),
        ("", Ok(Selection::Only(vec![]))),
        ("8080,9090", Ok(Selection::Only(vec![8080, 9090]))),
        ("*,80", Err("`*` (everything) cannot be combined")),
        ("80,x", Err("item 2 `x` is not a port number")),
    ];
    for (text, expected) in cases {
        match (expected, parse_port_selection(text)) {
            (Ok(selection), Ok(got)) => assert_eq!(&got, selection, "input `{text}`"),
            (Err(fragment), Err(message)) => {
                assert!(message.contains(fragment), "input `{text}`: `{message}`")
            }
            (expected, got) => panic!("input `{text}`: expected {expected:?}, got {got:?}"),
        }
    }
    assert!(Selection::<u16>::Only(vec![]).is_nothing());
    assert!(!Selection::<u16>::All.is_nothing());
}

#[test]
fn cidr_lists_mix_families_and_name_the_bad_item() {
    let parsed =
        parse_cidr_list("10.0.0.0/8, 2001:db8::/32,198.18.0.1,10.0.0.0/8").expect("valid list");
    let shown: Vec<String> = parsed.iter().map(Cidr::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32", "198.18.0.1/32"]);
    let cases: &[(&str, &str)] = &[
        (
            "10.0.0.0/8,10.1.0.0/8",
            "item 2: 10.1.0.0/8: address has bits set",
        ),
        (
            "10.0.0.0/8,,",
            "item 2: ``: `` is not an IPv4 or IPv6 address",
        ),
        (
            "fe80::/129",
            "item 1: fe80::/129: prefix length exceeds 128",
        ),
        ("*,10.0.0.0/8", "cannot be combined"),
    ];
    for (text, fragment) in cases {
        let message = parse_cidr_selection(text).expect_err("invalid");
        assert!(message.contains(fragment), "input `{text}`: `{message}`");
    }
    assert_eq!(parse_cidr_selection("*"), Ok(Selection::All));
    assert_eq!(parse_cidr_selection(""), Ok(Selection::Only(vec![])));
}

#[test]
fn interface_lists_accept_kernel_names_and_the_wildcard() {
    assert_eq!(
        parse_interface_list("eth1, net-2,veth_a.10,cali+,eth1"),
        Ok(vec![
            "eth1".to_string(),
            "net-2".to_string(),
            "veth_a.10".to_string(),
            "cali+".to_string()
        ])
    );
    assert_eq!(parse_interface_list(""), Ok(vec![]));
    let cases: &[(&str, &str)] = &[
        ("eth0,", "item 2: an interface name cannot be empty"),
        ("averyveryverylongname", "longer than 15 characters"),
        ("+", "`+` is not an interface name"),
        ("..", "`..` is not an interface name"),
        ("eth 0", "contains ` `"),
        ("eth\"0", "contains `\"`"),
        ("a+b", "contains `+`"),
        ("!eth0", "contains `!`"),
    ];
    for (text, fragment) in cases {
        let message = parse_interface_list(text).expect_err("invalid");
        assert!(message.contains(fragment), "input `{text}`: `{message}`");
    }
}

#[test]
fn validation_names_the_offending_option() {
    let cases: &[(CaptureConfig, Option<&str>)] = &[
        (CaptureConfig::default(), None),
        (
            CaptureConfig {
                exclude_inbound_ports: vec![],
                include_inbound_ports: Selection::Only(vec![]),
                include_outbound_cidrs: Selection::Only(vec![]),
                ..CaptureConfig::default()
            },
            None,
        ),
        (
            CaptureConfig {
                inbound_port: 15001,
                ..CaptureConfig::default()
            },
            Some("--inbound-port"),
        ),
        (
            CaptureConfig {
                outbound_port: 0,
                ..CaptureConfig::default()
            },
            Some("--outbound-port"),
        ),
        (
            CaptureConfig {
                inbound_port: 0,
                ..CaptureConfig::default()
            },
            Some("--inbound-port"),
        ),
        (
            CaptureConfig {
                exclude_inbound_ports: vec![22, 0],
                ..CaptureConfig::default()
            },
            Some("--exclude-inbound-ports"),
        ),
        (
            CaptureConfig {
                include_inbound_ports: Selection::Only(vec![0]),
                ..CaptureConfig::default()
            },
            Some("--include-inbound-ports"),
        ),
        (
            CaptureConfig {
                exclude_outbound_ports: vec![0],
                ..CaptureConfig::default()
            },
            Some("--exclude-outbound-ports"),
        ),
        (
            CaptureConfig {
                exclude_interfaces: vec!["eth 0".to_string()],
                ..CaptureConfig::default()
            },
            Some("--exclude-interfaces"),
        ),
    ];
    for (config, expected_field) in cases {
        match (expected_field, config.validate()) {
            (None, Ok(())) => {}
            (Some(field), Err(err)) => {
                assert!(err.to_string().contains(field), "{config:?}: `{err}`")
            }
            (expected, got) => panic!("{config:?}: expected {expected:?}, got {got:?}"),
        }
    }
}
