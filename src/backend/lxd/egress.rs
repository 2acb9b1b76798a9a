//! The LXD workloads' egress policy: an LXD network ACL on the bridge the workloads use.
//!
//! A container on LXD has its own network namespace, so the host's loopback services are not
//! reachable from inside anyway; what is left is what the bridge routes: the host's own
//! addresses (the bridge gateway, every interface: the provider's ports), link-local addresses
//! (the cloud metadata service at 169.254.169.254) and the private neighbours of the host's
//! networks. An ACL rejects all of them (the same list as the sandbox's, see
//! [`crate::backend::sandbox::network`], plus `egress_deny`), allows everything else, and is
//! put on the network named by `backend.lxd.egress_network` together with default actions that
//! allow what no rule names. LXD keeps DHCP and DNS to the bridge itself working.
//!
//! LXD 5.0 (Debian 12) attaches ACLs to bridge *networks* only, not to single NICs, so the
//! policy needs a network dedicated to workloads: every instance's `eth0` is put on it. The
//! backend creates or updates the ACL (`paygress-egress-<network>`) and sets it on the network
//! when it connects. With no `egress_network` it uses the bridge `provider/lxd-setup.sh` makes
//! (`paygressbr0`) when LXD has it, and otherwise refuses to start unless the operator set
//! `allow_unfiltered_egress` (then it changes no network and says so at start).

use serde_json::{json, Value};

use crate::backend::sandbox::network::{host_addresses, Cidr, DENY};

/// The ACL's name for a network.
pub fn acl_name(network: &str) -> String {
    format!("paygress-egress-{network}")
}

/// Every destination the ACL rejects: the fixed list, the host's addresses, the config's.
pub fn denied(extra: &[String]) -> Result<Vec<Cidr>, String> {
    let mut v: Vec<Cidr> = DENY.iter().filter_map(|s| s.parse().ok()).collect();
    v.extend(host_addresses().into_iter().map(Cidr::host));
    for s in extra {
        v.push(
            s.parse()
                .map_err(|e| format!("backend.lxd.egress_deny: {e}"))?,
        );
    }
    v.sort_by_key(|c| c.to_string());
    v.dedup();
    Ok(v)
}

/// The ACL object (`POST /1.0/network-acls`; `PUT` takes the same without the name).
pub fn acl_body(name: &str, deny: &[Cidr]) -> Value {
    let destinations = deny
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    json!({
        "name": name,
        "description": "Paygress workloads: no host, link-local or private destinations",
        "egress": [
            { "action": "reject", "destination": destinations, "state": "enabled" },
        ],
        "ingress": [],
        "config": {},
    })
}

/// The network settings that put the ACL in force.
pub fn network_patch(acl: &str) -> Value {
    json!({
        "config": {
            "security.acls": acl,
            "security.acls.default.egress.action": "allow",
            "security.acls.default.ingress.action": "allow",
        }
    })
}

/// Whether the ACL LXD holds (`GET /1.0/network-acls/{name}`) already says what `want` (the
/// `PUT` body) says. LXD fills in the fields a rule leaves out, so only ours are compared.
pub fn acl_matches(have: &Value, want: &Value) -> bool {
    let rules = |v: &Value, dir: &str| -> Vec<(String, String, String)> {
        v.get(dir)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let f =
                            |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        (f("action"), f("destination"), f("state"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    rules(have, "egress") == rules(want, "egress")
        && rules(have, "ingress") == rules(want, "ingress")
}

/// Whether the network (`GET /1.0/networks/{name}`) already has [`network_patch`]'s settings.
pub fn network_has(network: &Value, acl: &str) -> bool {
    let want = network_patch(acl);
    let (Some(have), Some(want)) = (
        network.get("config").and_then(Value::as_object),
        want.get("config").and_then(Value::as_object),
    ) else {
        return false;
    };
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_rejects_private_link_local_and_the_host() {
        let deny = denied(&["198.18.7.0/24".into()]).unwrap();
        let body = acl_body("paygress-egress-x", &deny);
        let d = body["egress"][0]["destination"].as_str().unwrap();
        for want in [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "192.168.0.0/16",
            "198.18.7.0/24",
        ] {
            assert!(d.contains(want), "{want}: {d}");
        }
        assert_eq!(body["egress"][0]["action"], "reject");
        assert!(denied(&["junk".into()]).is_err());
        assert_eq!(
            network_patch("a")["config"]["security.acls.default.egress.action"],
            "allow"
        );
    }

    #[test]
    fn an_acl_as_lxd_returns_it_matches_what_was_put() {
        let deny = denied(&[]).unwrap();
        let want = acl_body("paygress-egress-x", &deny);
        let mut have = want.clone();
        // LXD answers every rule with all its fields.
        have["egress"][0]["source"] = "".into();
        have["egress"][0]["protocol"] = "".into();
        have["used_by"] = json!(["/1.0/networks/x"]);
        assert!(acl_matches(&have, &want));
        have["egress"][0]["destination"] = "10.0.0.0/8".into();
        assert!(!acl_matches(&have, &want), "another destination list");
        let mut net = json!({"config": {"ipv4.address": "10.78.0.1/24"}});
        assert!(!network_has(&net, "paygress-egress-x"));
        net["config"].as_object_mut().unwrap().extend(
            network_patch("paygress-egress-x")["config"]
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(network_has(&net, "paygress-egress-x"));
        assert!(!network_has(&net, "paygress-egress-y"));
    }
}
