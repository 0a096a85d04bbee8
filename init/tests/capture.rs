//! Root tests with real TCP through real capture rules, in throwaway namespaces:
//! a "pod" and a "remote" namespace joined by veth pairs, nothing else.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{
    APP, Identity, NetNs, PROXY, PROXY_ID, assert_idle, listen, receive, send, send_as, v4, v6,
};

const POD_V4: [u8; 4] = [198, 18, 253, 1];
const REMOTE_V4: [u8; 4] = [198, 18, 253, 2];
const POD_V6: &str = "2001:2:0:fd::1";
const REMOTE_V6: &str = "2001:2:0:fd::2";

/// A pod joined to a remote namespace by two links: kp0/kr0 (IPv4 + IPv6)
/// and kp1/kr1 (IPv4, for the excluded-interface case). The remote also
/// owns 198.18.252.1, routed via kp0, for the excluded-CIDR case.
fn pod_and_remote() -> (NetNs, NetNs) {
    let pod = NetNs::create();
    let remote = NetNs::create();
    let peer = remote.name.as_str();
    pod.setup(&[
        "ip link set lo up",
        &format!("ip link add kp0 type veth peer name kr0 netns {peer}"),
        &format!("ip link add kp1 type veth peer name kr1 netns {peer}"),
        "ip addr add 198.18.253.1/30 dev kp0",
        &format!("ip -6 addr add {POD_V6}/64 dev kp0 nodad"),
        "ip addr add 198.18.251.1/30 dev kp1",
        "ip link set kp0 up",
        "ip link set kp1 up",
        "ip route add 198.18.252.0/24 via 198.18.253.2",
    ]);
    remote.setup(&[
        "ip link set lo up",
        "ip addr add 198.18.253.2/30 dev kr0",
        "ip addr add 198.18.252.1/32 dev kr0",
        &format!("ip -6 addr add {REMOTE_V6}/64 dev kr0 nodad"),
        "ip addr add 198.18.251.2/30 dev kr1",
        "ip link set kr0 up",
        "ip link set kr1 up",
    ]);
    (pod, remote)
}

fn at(address: [u8; 4], port: u16) -> SocketAddr {
    v4(address[0], address[1], address[2], address[3], port)
}

#[test]
fn outbound_exclusions_dns_and_the_proxy_identity_are_not_redirected() {
    let (pod, remote) = pod_and_remote();
    pod.knit_init_ok(&[
        "--ipv6",
        "on",
        "--exclude-outbound-cidrs",
        "198.18.252.0/24",
        "--exclude-outbound-ports",
        "8081",
        "--exclude-interfaces",
        "kp1",
    ]);
    let service = at(REMOTE_V4, 80);
    let excluded_cidr = v4(198, 18, 252, 1, 80);
    let excluded_port = at(REMOTE_V4, 8081);
    let dns = at(REMOTE_V4, 53);
    let other_link = v4(198, 18, 251, 2, 80);
    let service_v6 = v6(REMOTE_V6, 80);

    let (proxy, proxy_v6) =
        pod.enter(|| (listen(v4(127, 0, 0, 1, 15001)), listen(v6("::1", 15001))));
    let targets = [
        service,
        excluded_cidr,
        excluded_port,
        dns,
        other_link,
        service_v6,
    ];
    let listeners: Vec<_> = remote.enter(|| targets.iter().map(|t| listen(*t)).collect());
    let [service_l, cidr_l, port_l, dns_l, link_l, service_v6_l] = &listeners[..] else {
        unreachable!("one listener per target")
    };

    // An ordinary process is captured and the proxy learns where it was going.
    send(&pod, service, "app");
    assert_eq!(
        receive(&proxy, "the outbound port"),
        ("app".into(), service)
    );

    // Exclusions go straight to the remote, untouched.
    for (target, listener, token) in [
        (excluded_cidr, cidr_l, "excluded-cidr"),
        (excluded_port, port_l, "excluded-port"),
        (dns, dns_l, "dns-over-tcp"),
        (other_link, link_l, "excluded-interface"),
    ] {
        send(&pod, target, token);
        assert_eq!(receive(listener, token), (token.to_string(), target));
    }

    // IPv6 is captured too, and the original destination survives the redirect.
    send(&pod, service_v6, "app-v6");
    assert_eq!(
        receive(&proxy_v6, "the IPv6 outbound port"),
        ("app-v6".into(), service_v6)
    );

    // The proxy's own upstream connections leave as they are: uid and gid each suffice.
    for (who, token) in [
        (PROXY, "proxy"),
        (
            Identity {
                uid: PROXY_ID,
                gid: 4242,
            },
            "proxy-uid",
        ),
        (
            Identity {
                uid: 4242,
                gid: PROXY_ID,
            },
            "proxy-gid",
        ),
    ] {
        send_as(&pod, who, None, service, token);
        assert_eq!(receive(service_l, token), (token.to_string(), service));
        send_as(&pod, who, None, service_v6, token);
        assert_eq!(
            receive(service_v6_l, token),
            (token.to_string(), service_v6)
        );
    }
    // Another unprivileged user is captured like the app.
    send_as(
        &pod,
        Identity {
            uid: 4242,
            gid: 4242,
        },
        None,
        service,
        "other-user",
    );
    assert_eq!(
        receive(&proxy, "the outbound port"),
        ("other-user".into(), service)
    );

    for (listener, what) in [
        (&proxy, "the outbound port"),
        (&proxy_v6, "the IPv6 outbound port"),
    ] {
        assert_idle(listener, what);
    }
    for listener in &listeners {
        assert_idle(listener, "a remote listener");
    }

    // --capture-dns sends DNS over TCP to the proxy like everything else.
    pod.knit_init_ok(&["--ipv6", "on", "--capture-dns"]);
    send(&pod, dns, "dns-captured");
    assert_eq!(
        receive(&proxy, "the outbound port"),
        ("dns-captured".into(), dns)
    );
    assert_idle(dns_l, "the remote DNS port");
}

#[test]
fn calls_inside_the_pod_reach_the_side_they_belong_to() {
    let (pod, _remote) = pod_and_remote();
    // The proxy delivers IPv6 inbound connections from ::6, which must be local.
    pod.setup(&["ip -6 addr add ::6/128 dev lo nodad"]);
    pod.knit_init_ok(&["--ipv6", "on"]);
    let app = at(POD_V4, 8080);
    let app_v6 = v6(POD_V6, 8080);
    let localhost_app = v4(127, 0, 0, 1, 8081);
    let (outbound, outbound_v6, inbound, inbound_v6, app_l, app_v6_l, localhost_l) =
        pod.enter(|| {
            (
                listen(v4(127, 0, 0, 1, 15001)),
                listen(v6("::1", 15001)),
                listen(v4(0, 0, 0, 0, 15006)),
                listen(v6("::", 15006)),
                listen(app),
                listen(app_v6),
                listen(localhost_app),
            )
        });

    for (target, out_l, in_l, app_listener, source) in [
        (
            app,
            &outbound,
            &inbound,
            &app_l,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        ),
        (
            app_v6,
            &outbound_v6,
            &inbound_v6,
            &app_v6_l,
            "::6".parse().expect("valid"),
        ),
    ] {
        // The app calling its own pod IP goes through the proxy's outbound side...
        send_as(&pod, APP, None, target, "app-to-self");
        assert_eq!(
            receive(out_l, "the outbound port"),
            ("app-to-self".into(), target)
        );

        // ...the proxy's onward call to its own pod IP enters the inbound side (uid or gid)...
        for (who, token) in [
            (PROXY, "proxy-to-self"),
            (
                Identity {
                    uid: PROXY_ID,
                    gid: 4242,
                },
                "proxy-uid-to-self",
            ),
            (
                Identity {
                    uid: 4242,
                    gid: PROXY_ID,
                },
                "proxy-gid-to-self",
            ),
        ] {
            send_as(&pod, who, None, target, token);
            assert_eq!(
                receive(in_l, "the inbound port"),
                (token.to_string(), target)
            );
        }

        // ...and its delivery to the app from the loopback source is never captured again.
        send_as(&pod, PROXY, Some(source), target, "delivery");
        assert_eq!(
            receive(app_listener, "the app"),
            ("delivery".into(), target)
        );
    }

    // Loopback stays loopback, whoever calls.
    for (who, token) in [(APP, "app-localhost"), (PROXY, "proxy-localhost")] {
        send_as(&pod, who, None, localhost_app, token);
        assert_eq!(
            receive(&localhost_l, "127.0.0.1:8081"),
            (token.to_string(), localhost_app)
        );
    }

    for (listener, what) in [
        (&outbound, "the outbound port"),
        (&outbound_v6, "the IPv6 outbound port"),
        (&inbound, "the inbound port"),
        (&inbound_v6, "the IPv6 inbound port"),
        (&app_l, "the app"),
        (&app_v6_l, "the IPv6 app"),
        (&localhost_l, "the localhost app"),
    ] {
        assert_idle(listener, what);
    }
}

#[test]
fn inbound_tcp_is_captured_except_for_excluded_ports_and_interfaces() {
    let (pod, remote) = pod_and_remote();
    pod.knit_init_ok(&["--ipv6", "on", "--exclude-interfaces", "kp1"]);

    let app = at(POD_V4, 8080);
    let health = at(POD_V4, 15021);
    let app_v6 = v6(POD_V6, 8080);
    let app_other_link = v4(198, 18, 251, 1, 8080);
    let (inbound, inbound_v6, app_l, health_l, app_v6_l, other_link_l) = pod.enter(|| {
        (
            listen(v4(0, 0, 0, 0, 15006)),
            listen(v6("::", 15006)),
            listen(app),
            listen(health),
            listen(app_v6),
            listen(app_other_link),
        )
    });

    send(&remote, app, "to-app");
    assert_eq!(
        receive(&inbound, "the inbound port"),
        ("to-app".into(), app)
    );
    send(&remote, app_v6, "to-app-v6");
    assert_eq!(
        receive(&inbound_v6, "the IPv6 inbound port"),
        ("to-app-v6".into(), app_v6)
    );
    send(&remote, health, "to-health");
    assert_eq!(
        receive(&health_l, "excluded port 15021"),
        ("to-health".into(), health)
    );
    send(&remote, app_other_link, "via-kp1");
    assert_eq!(
        receive(&other_link_l, "the app behind the excluded interface"),
        ("via-kp1".into(), app_other_link)
    );

    for (listener, what) in [
        (&inbound, "the inbound port"),
        (&inbound_v6, "the IPv6 inbound port"),
        (&app_l, "198.18.253.1:8080"),
        (&app_v6_l, "the IPv6 app"),
    ] {
        assert_idle(listener, what);
    }
}

#[test]
fn only_the_listed_inbound_ports_are_captured() {
    let (pod, remote) = pod_and_remote();
    pod.knit_init_ok(&["--ipv6", "off", "--include-inbound-ports", "8080"]);
    let listed = at(POD_V4, 8080);
    let unlisted = at(POD_V4, 9090);
    let (inbound, unlisted_l) = pod.enter(|| (listen(v4(0, 0, 0, 0, 15006)), listen(unlisted)));
    send(&remote, listed, "listed");
    assert_eq!(
        receive(&inbound, "the inbound port"),
        ("listed".into(), listed)
    );
    send(&remote, unlisted, "unlisted");
    assert_eq!(
        receive(&unlisted_l, "port 9090"),
        ("unlisted".into(), unlisted)
    );
    assert_idle(&inbound, "the inbound port");
}
