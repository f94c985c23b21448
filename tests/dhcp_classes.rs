//! Client classes, PXE boot and option 82 reservations against real clients: ISC `dhclient`
//! sending a vendor and a user class from its config file, busybox `udhcpc -V` and `-x`,
//! Debian's `dhcrelay -a` adding a circuit ID between a client namespace and the server.
//! dhclient's classless routes (option 121) are installed by Debian's own exit hook. The
//! lab is `common::dhcp_lab` (server in `srv`, client on `cli`, relay namespace `rly`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dhcp_lab::*;
use common::netns::{require_root, veth, Netns};

fn last_octet(ip: &str) -> u8 {
    ip.rsplit('.')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0)
}

/// A fresh MAC for the next client on c0, so earlier leases do not follow it.
fn new_mac(lab: &Lab, n: u8) {
    let mac = format!("02:c1:00:00:00:{n:02x}");
    lab.cli.run(&["ip", "link", "set", "c0", "address", &mac]);
}

const CLASSES: &str = r#"
[[client_class]]
name = "voip"
match = { vendor_class = "Polycom*" }
[[client_class.option]]
code = 66
type = "string"
value = "voip-tftp"

[[client_class]]
name = "eng"
match = { user_class = "engineering" }
[[client_class.option]]
code = 119
type = "domains"
value = ["eng.lab.test", "lab.test"]
"#;

/// The lab's first subnet gains a pool for voip phones, option 66 and classless routes.
fn with_classes(_: &Path, text: String) -> String {
    let text = text.replacen(
        "[[subnet.pool]]\nrange_start = \"10.0.0.100\"",
        "[[subnet.option]]\ncode = 66\ntype = \"string\"\nvalue = \"subnet-tftp\"\n\
         [[subnet.option]]\ncode = 121\ntype = \"routes\"\n\
         value = [\"10.77.0.0/16 via 10.0.0.1\", \"10.78.1.0/24 via 10.0.0.1\"]\n\
         [[subnet.pool]]\nrange_start = \"10.0.0.20\"\nrange_end = \"10.0.0.29\"\nclasses = [\"voip\"]\n\
         [[subnet.pool]]\nrange_start = \"10.0.0.100\"",
        1,
    );
    format!("{text}\n{CLASSES}")
}

#[test]
fn dhclient_and_udhcpc_get_their_class_pool_and_options_and_dhclient_installs_classless_routes() {
    if !require_root("dhclient_and_udhcpc_get_their_class_pool_and_options") {
        return;
    }
    let lab = Lab::with_config("cls", "1h", with_classes);
    // dhclient: vendor class and user class from its config file.
    let cdir = lab.dir.path().join("dhclient");
    std::fs::create_dir_all(&cdir).expect("dir");
    let conf = cdir.join("dhclient.conf");
    std::fs::write(
        &conf,
        "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\
         send vendor-class-identifier \"Polycom-VVX-400\";\n\
         send user-class \"engineering\";\n\
         request subnet-mask, routers, domain-name, domain-search, tftp-server-name,\n\
         \trfc3442-classless-static-routes;\n",
    )
    .expect("conf");
    new_mac(&lab, 1);
    let dhclient = Dhclient::new(&cdir, Some(&conf), ExitHook::ClasslessRoutes);
    let mut client = dhclient
        .cmd(&lab, &["-d"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dhclient");
    let env = dhclient.wait_bound(&lab);
    let _ = client.kill();
    let _ = client.wait();
    let ip = env_var(&env, "new_ip_address").expect("address");
    assert!((20..=29).contains(&last_octet(&ip)), "voip pool: {ip}");
    assert_eq!(
        env_var(&env, "new_tftp_server_name").as_deref(),
        Some("voip-tftp"),
        "{env}"
    );
    assert_eq!(
        env_var(&env, "new_domain_search").as_deref(),
        Some("eng.lab.test. lab.test."),
        "option 119 from the user class: {env}"
    );
    let routes = lab.cli.run(&["ip", "-4", "route", "show", "dev", "c0"]);
    assert!(
        routes.contains("10.77.0.0/16 via 10.0.0.1")
            && routes.contains("10.78.1.0/24 via 10.0.0.1"),
        "option 121 routes installed: {routes}"
    );
    let lease = lab.lease_json(&ip);
    assert_eq!(
        lease["classes"],
        serde_json::json!(["voip", "eng"]),
        "{lease}"
    );

    // udhcpc -V: the vendor class alone.
    new_mac(&lab, 2);
    let env = udhcpc(
        &lab,
        &lab.cli,
        "c0",
        &lab.dir.path().join("u1"),
        &["-V", "Polycom-X", "-O", "tftp"],
    );
    let ip = env_var(&env, "ip").expect("ip");
    assert!((20..=29).contains(&last_octet(&ip)), "voip pool: {ip}");
    assert_eq!(env_var(&env, "tftp").as_deref(), Some("voip-tftp"), "{env}");

    // A client in no class: the shared pool and the subnet's option.
    new_mac(&lab, 3);
    let env = udhcpc(
        &lab,
        &lab.cli,
        "c0",
        &lab.dir.path().join("u2"),
        &["-V", "other", "-O", "tftp"],
    );
    let ip = env_var(&env, "ip").expect("ip");
    assert!((100..=199).contains(&last_octet(&ip)), "shared pool: {ip}");
    assert_eq!(
        env_var(&env, "tftp").as_deref(),
        Some("subnet-tftp"),
        "{env}"
    );
    assert_eq!(lab.lease_json(&ip)["classes"], serde_json::json!([]));

    let metrics = lab.api("/metrics");
    assert!(
        metric(
            &metrics,
            "athena_dhcp_packets_sent_total{type=\"ack\",class=\"voip\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "athena_dhcp_packets_sent_total{type=\"ack\",class=\"none\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// The PXE example of the README and athena-dhcpd.toml(5).
const PXE: &str = r#"
[[client_class]]
name = "ipxe"
match = { user_class = "iPXE" }
next_server = "10.0.0.5"
boot_file = "http://boot.lab/boot.ipxe"

[[client_class]]
name = "uefi"
match = { arch = [7, 9] }
next_server = "10.0.0.5"
boot_file = "ipxe.efi"

[[client_class]]
name = "bios"
match = { arch = [0] }
next_server = "10.0.0.5"
boot_file = "undionly.kpxe"
"#;

#[test]
fn pxe_bios_uefi_and_ipxe_clients_each_get_their_boot_file_and_next_server() {
    if !require_root("pxe_bios_uefi_and_ipxe_clients_each_get_their_boot_file") {
        return;
    }
    let lab = Lab::with_config("pxe", "1h", |_, t| format!("{t}\n{PXE}"));
    // BIOS and UEFI firmware name their architecture (option 93); iPXE also says UEFI but
    // sends the user class "iPXE" (option 77), and its class comes first in the file.
    let clients: [(u8, &[&str], &str); 3] = [
        (1, &["-x", "0x5d:0000"], "undionly.kpxe"),
        (2, &["-x", "0x5d:0007"], "ipxe.efi"),
        (
            3,
            &["-x", "0x5d:0007", "-x", "0x4d:69505845"],
            "http://boot.lab/boot.ipxe",
        ),
    ];
    for (n, args, file) in clients {
        new_mac(&lab, n);
        let dir = lab.dir.path().join(format!("client{n}"));
        let env = udhcpc(&lab, &lab.cli, "c0", &dir, args);
        assert_eq!(
            env_var(&env, "siaddr").as_deref(),
            Some("10.0.0.5"),
            "{args:?}: {env}"
        );
        assert_eq!(
            env_var(&env, "boot_file").as_deref(),
            Some(file),
            "{args:?}: {env}"
        );
    }
    // The user class from dhclient's config file; the boot file lands in its lease file.
    new_mac(&lab, 4);
    let cdir = lab.dir.path().join("ipxe");
    std::fs::create_dir_all(&cdir).expect("dir");
    let conf = cdir.join("dhclient.conf");
    std::fs::write(&conf, "send user-class \"iPXE\";\n").expect("conf");
    let dhclient = Dhclient::new(&cdir, Some(&conf), ExitHook::ClasslessRoutes);
    let out = dhclient.cmd(&lab, &["-1"]).output().expect("dhclient");
    assert!(out.status.success(), "{out:?}\n{}", lab.log());
    dhclient.stop_daemonized();
    let lease_file = std::fs::read_to_string(dhclient.leases()).expect("lease file");
    assert!(
        lease_file.contains("filename \"http://boot.lab/boot.ipxe\";"),
        "{lease_file}"
    );
}

#[test]
fn dhcrelay_adds_a_circuit_id_and_the_port_reservation_and_class_follow_it() {
    if !require_root("dhcrelay_adds_a_circuit_id_and_the_port_reservation") {
        return;
    }
    let lab = Lab::with_config("d82", "1h", |_, t| {
        let t = t.replacen(
            "range_end = \"10.9.0.250\"\n",
            "range_end = \"10.9.0.250\"\n[[subnet.reservation]]\ncircuit_id = \"d1\"\nip = \"10.9.0.77\"\n",
            1,
        );
        format!(
            "{t}\n[[client_class]]\nname = \"port-d1\"\nmatch = {{ circuit_id = \"d?\" }}\n\
             [[client_class.option]]\ncode = 66\ntype = \"string\"\nvalue = \"relay-tftp\"\n"
        )
    });
    // A client namespace behind the relay: the relay's d1 (10.9.0.1/24, the giaddr) faces it.
    let down = Netns::new("d82d");
    lab.rly
        .run(&["ip", "addr", "del", "10.9.0.1/32", "dev", "lo"]);
    veth(&lab.rly, "d1", &down, "d0");
    lab.rly.addr("d1", "10.9.0.1/24");
    let pid_file = lab.dir.path().join("dhcrelay.pid");
    let mut relay = lab
        .rly
        .cmd("dhcrelay")
        .args(["-d", "-4", "-a", "-pf"])
        .arg(&pid_file)
        .args(["-iu", "r1", "-id", "d1", "10.1.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dhcrelay (apt-get install isc-dhcp-relay)");
    std::thread::sleep(Duration::from_millis(500));
    let env = udhcpc(
        &lab,
        &down,
        "d0",
        &lab.dir.path().join("relayed"),
        &["-O", "tftp"],
    );
    let _ = relay.kill();
    let _ = relay.wait();
    assert_eq!(env_var(&env, "ip").as_deref(), Some("10.9.0.77"), "{env}");
    assert_eq!(
        env_var(&env, "tftp").as_deref(),
        Some("relay-tftp"),
        "{env}"
    );
    let lease = lab.lease_json("10.9.0.77");
    assert_eq!(lease["classes"], serde_json::json!(["port-d1"]), "{lease}");
    // dhcrelay's option 82: sub-option 1, the interface name "d1".
    let relay_info = lease["relay_info"].as_str().unwrap_or_default();
    assert!(relay_info.starts_with("01:02:64:31"), "{lease}");
}

#[test]
fn a_malformed_option_value_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[client_class]]\nname = \"c\"\nmatch = { arch = [7] }\n\
         [[client_class.option]]\ncode = 121\ntype = \"routes\"\nvalue = [\"10.1.0.0/16 via\"]\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":7:1: client_class[0].option[0].value: invalid route \"10.1.0.0/16 via\""),
        "{err}"
    );
}
