//! The table builder's semantics kept up to date one object at a time, for the watch.
//!
//! [`Incremental`] holds the (trimmed) Services, what each EndpointSlice contributes, and the
//! built entry of every Service. A change marks only the Services it touches; [`flush`]
//! rebuilds those (with the same functions [`super::build::build_table_with`] uses, so the
//! semantics have one code path) and settles ClusterIP conflicts only among the Services that
//! share an address with a rebuilt one. [`snapshot`] then assembles a [`ServiceTable`] from
//! the built entries without re-running any semantics.
//!
//! Problems (bad objects, malformed annotations) are returned by [`flush`] only when they
//! are new for that object, so a long-running watch warns once per bad version of an
//! object, not on every rebuild.
//!
//! Pure: no I/O, no tokio.
//!
//! [`flush`]: Incremental::flush
//! [`snapshot`]: Incremental::snapshot

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::build::{
    candidate_entry, check_slice, claim_cluster_ips, identity, invalid_entry, BuildOptions,
    SliceInfo,
};
use super::error::ObjectError;
use super::policy::Policy;
use super::table::{ServiceEntry, ServiceId, ServiceTable};

/// `(namespace, name)`.
pub type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    Slice,
}

/// What is known of one EndpointSlice: the Service it feeds (if it is usable).
#[derive(Debug)]
struct SliceRecord {
    service: Option<Key>,
    resource_version: Option<String>,
}

/// Services and EndpointSlices, with every Service's built entry.
#[derive(Debug)]
pub struct Incremental {
    opts: BuildOptions,
    policy: Policy,
    services: HashMap<Key, Service>,
    slices: HashMap<Key, SliceRecord>,
    /// Usable slices by the Service they feed, by slice name.
    by_service: HashMap<Key, BTreeMap<String, SliceInfo>>,
    /// Entries before ClusterIP conflicts between Services are settled.
    candidates: HashMap<Key, ServiceEntry>,
    /// Exposed candidates by the ClusterIPs they claim.
    claims: HashMap<IpAddr, BTreeSet<Key>>,
    /// The final entries, sorted.
    entries: BTreeMap<Key, ServiceEntry>,
    dirty: HashSet<Key>,
    /// Problems last reported per object (so each is reported once).
    reported: HashMap<(Kind, Key), Vec<ObjectError>>,
    /// Problems found since the last flush, by object.
    found: HashMap<(Kind, Key), Vec<ObjectError>>,
    service_cidrs: Option<Vec<IpNet>>,
    /// The names of exposed Services (see `names`), rebuilt with their entries.
    names: HashMap<Key, Arc<super::names::ServiceNames>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    identity(meta)
}

impl Incremental {
    pub fn new(opts: BuildOptions, policy: Policy) -> Self {
        Incremental {
            opts,
            policy,
            services: HashMap::new(),
            slices: HashMap::new(),
            by_service: HashMap::new(),
            candidates: HashMap::new(),
            claims: HashMap::new(),
            entries: BTreeMap::new(),
            dirty: HashSet::new(),
            reported: HashMap::new(),
            found: HashMap::new(),
            service_cidrs: None,
            names: HashMap::new(),
        }
    }

    /// Number of Services held (exposed or not).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Whether changes are waiting for [`Incremental::flush`].
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: Service) {
        let key = key_of(&svc.metadata);
        if let Some(old) = self.services.get(&key) {
            let rv = old.metadata.resource_version.as_deref();
            if rv.is_some() && rv == svc.metadata.resource_version.as_deref() {
                return;
            }
        }
        self.dirty.insert(key.clone());
        self.services.insert(key, svc);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if self.services.remove(&key).is_some() {
            self.dirty.insert(key.clone());
        }
        self.reported.remove(&(Kind::Service, key));
    }

    /// Replaces all Services with a complete list (a (re)list): those not in it are gone.
    pub fn replace_services(&mut self, list: Vec<Service>) {
        let keep: HashSet<Key> = list.iter().map(|s| key_of(&s.metadata)).collect();
        let gone: Vec<Key> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_service(&ns, &name);
        }
        for svc in list {
            self.apply_service(svc);
        }
    }

    /// An EndpointSlice was added or changed.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let key = key_of(&slice.metadata);
        let rv = slice.metadata.resource_version.clone();
        if let Some(old) = self.slices.get(&key) {
            if rv.is_some() && old.resource_version == rv {
                return;
            }
        }
        self.forget_slice(&key);
        let who = format!("{}/{}", key.0, key.1);
        let service = match check_slice(slice, &who) {
            Ok(Some((service, info))) => {
                let skey = (key.0.clone(), service);
                self.by_service
                    .entry(skey.clone())
                    .or_default()
                    .insert(key.1.clone(), info);
                self.dirty.insert(skey.clone());
                Some(skey)
            }
            Ok(None) => None,
            Err(e) => {
                self.found
                    .entry((Kind::Slice, key.clone()))
                    .or_default()
                    .push(e);
                None
            }
        };
        self.found.entry((Kind::Slice, key.clone())).or_default();
        self.slices.insert(
            key,
            SliceRecord {
                service,
                resource_version: rv,
            },
        );
    }

    fn forget_slice(&mut self, key: &Key) {
        if let Some(old) = self.slices.remove(key) {
            if let Some(skey) = old.service {
                if let Some(m) = self.by_service.get_mut(&skey) {
                    m.remove(&key.1);
                    if m.is_empty() {
                        self.by_service.remove(&skey);
                    }
                }
                self.dirty.insert(skey);
            }
        }
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.forget_slice(&key);
        self.reported.remove(&(Kind::Slice, key.clone()));
        self.found.remove(&(Kind::Slice, key));
    }

    /// Replaces all EndpointSlices with a complete list.
    pub fn replace_slices(&mut self, list: Vec<EndpointSlice>) {
        let keep: HashSet<Key> = list.iter().map(|s| key_of(&s.metadata)).collect();
        let gone: Vec<Key> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_slice(&ns, &name);
        }
        for slice in &list {
            self.apply_slice(slice);
        }
    }

    /// The cluster's Service CIDRs (`None`: the cluster does not serve ServiceCIDR).
    /// Returns whether they changed.
    pub fn set_service_cidrs(&mut self, cidrs: Option<Vec<IpNet>>) -> bool {
        let cidrs = cidrs.map(|mut c| {
            c.sort();
            c.dedup();
            c
        });
        if cidrs == self.service_cidrs {
            return false;
        }
        self.service_cidrs = cidrs;
        true
    }

    /// Rebuilds the touched Services. Returns the problems not reported before and the
    /// number of Services rebuilt.
    pub fn flush(&mut self) -> (Vec<ObjectError>, usize) {
        let dirty: Vec<Key> = self.dirty.drain().collect();
        let rebuilt = dirty.len();
        // Candidates, and the ClusterIPs whose ownership may change.
        let mut seeds: BTreeSet<Key> = BTreeSet::new();
        let mut seed_ips: Vec<IpAddr> = Vec::new();
        for key in dirty {
            if let Some(old) = self.candidates.remove(&key) {
                if old.not_exposed.is_none() {
                    seed_ips.extend(old.cluster_ips.iter().copied());
                }
                self.unclaim(&key, &old);
            }
            self.found.insert((Kind::Service, key.clone()), Vec::new());
            if let Some(svc) = self.services.get(&key) {
                let id = Arc::new(ServiceId {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                });
                let slices: Vec<&SliceInfo> = self
                    .by_service
                    .get(&key)
                    .map(|m| m.values().collect())
                    .unwrap_or_default();
                let (entry, problems) =
                    candidate_entry(svc, &id, &slices, &self.opts, &self.policy);
                self.found.insert((Kind::Service, key.clone()), problems);
                if entry.not_exposed.is_none() {
                    for ip in &entry.cluster_ips {
                        self.claims.entry(*ip).or_default().insert(key.clone());
                    }
                }
                self.candidates.insert(key.clone(), entry);
            } else {
                self.entries.remove(&key);
                self.names.remove(&key);
                self.found.remove(&(Kind::Service, key.clone()));
                self.reported.remove(&(Kind::Service, key.clone()));
            }
            seeds.insert(key);
        }
        for ip in seed_ips {
            if let Some(set) = self.claims.get(&ip) {
                seeds.extend(set.iter().cloned());
            }
        }
        self.settle(seeds);
        (self.take_new_problems(), rebuilt)
    }

    fn unclaim(&mut self, key: &Key, entry: &ServiceEntry) {
        if entry.not_exposed.is_some() {
            return;
        }
        for ip in &entry.cluster_ips {
            if let Some(set) = self.claims.get_mut(ip) {
                set.remove(key);
                if set.is_empty() {
                    self.claims.remove(ip);
                }
            }
        }
    }

    /// Settles ClusterIP ownership for every Service sharing an address (transitively) with
    /// one of `seeds`, in namespace/name order, exactly as the whole-table build does.
    fn settle(&mut self, seeds: BTreeSet<Key>) {
        // Seeds that share no address with anyone (the usual case) settle alone.
        let mut group: BTreeSet<Key> = BTreeSet::new();
        let mut queue: Vec<Key> = seeds.into_iter().collect();
        let mut seen_ips: HashSet<IpAddr> = HashSet::new();
        while let Some(key) = queue.pop() {
            if !group.insert(key.clone()) {
                continue;
            }
            let Some(entry) = self.candidates.get(&key) else {
                continue;
            };
            if entry.not_exposed.is_some() {
                continue;
            }
            for ip in &entry.cluster_ips {
                if seen_ips.insert(*ip) {
                    if let Some(set) = self.claims.get(ip) {
                        queue.extend(set.iter().filter(|k| !group.contains(*k)).cloned());
                    }
                }
            }
        }
        let mut owners: HashMap<IpAddr, Arc<ServiceId>> = HashMap::new();
        for key in group {
            let Some(candidate) = self.candidates.get(&key) else {
                continue;
            };
            let Some(svc) = self.services.get(&key) else {
                continue;
            };
            let mut entry = candidate.clone();
            let problems = self
                .found
                .entry((Kind::Service, key.clone()))
                .or_insert_with(|| {
                    self.reported
                        .get(&(Kind::Service, key.clone()))
                        .cloned()
                        .unwrap_or_default()
                });
            problems.retain(|p| !p.problem.contains("is already the ClusterIP of Service"));
            if entry.not_exposed.is_none() {
                if let Some(err) = claim_cluster_ips(svc, &entry, &mut owners) {
                    entry = invalid_entry(svc, &entry.id, err.to_string());
                    problems.push(err);
                }
            }
            let slices: Vec<&SliceInfo> = self
                .by_service
                .get(&key)
                .map(|m| m.values().collect())
                .unwrap_or_default();
            match super::names::service_names(svc, &entry, &slices, &self.policy) {
                Some(names) => self.names.insert(key.clone(), Arc::new(names)),
                None => self.names.remove(&key),
            };
            self.entries.insert(key, entry);
        }
    }

    fn take_new_problems(&mut self) -> Vec<ObjectError> {
        let mut out = Vec::new();
        let mut found: Vec<((Kind, Key), Vec<ObjectError>)> = self.found.drain().collect();
        found.sort_by(|a, b| {
            (a.0 .0 == Kind::Service, &a.0 .1).cmp(&(b.0 .0 == Kind::Service, &b.0 .1))
        });
        for (obj, problems) in found {
            let before = self.reported.get(&obj).cloned().unwrap_or_default();
            out.extend(problems.iter().filter(|p| !before.contains(p)).cloned());
            if problems.is_empty() {
                self.reported.remove(&obj);
            } else {
                self.reported.insert(obj, problems);
            }
        }
        out
    }

    /// The current table as generation `generation` (call [`Incremental::flush`] first).
    pub fn snapshot(&self, generation: u64) -> ServiceTable {
        let services: Vec<ServiceEntry> = self.entries.values().cloned().collect();
        let mut table = ServiceTable::new(generation, services, Vec::new());
        table.service_cidrs = self.service_cidrs.clone();
        table.set_names(Arc::new(super::names::NameTable::from_services(
            self.names.values().cloned().collect(),
        )));
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::build_table_with;
    use crate::cluster::parse::Objects;
    use crate::cluster::table::{Lookup, NotExposed, Protocol};
    use serde_json::json;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ips: &[&str], rv: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn usable(t: &ServiceTable, ip: &str) -> Vec<String> {
        match t.lookup(ip.parse().unwrap(), 80, Protocol::Tcp) {
            Lookup::Port(p) => p.usable.iter().map(|a| a.to_string()).collect(),
            other => panic!("{ip}: {other:?}"),
        }
    }

    #[test]
    fn same_table_as_the_whole_build_and_only_touched_services_rebuilt() {
        let services = vec![
            svc("a", "10.96.0.1"),
            svc("b", "10.96.0.2"),
            svc("c", "10.96.0.2"),
            svc("d", "10.96.0.4"),
        ];
        let slices = vec![
            slice("a-1", "a", &["10.244.0.1"], "1"),
            slice("a-2", "a", &["10.244.0.2"], "1"),
            slice("b-1", "b", &["10.244.0.3"], "1"),
        ];
        let objs = Objects {
            services: services.clone(),
            slices: slices.clone(),
            ignored_kinds: Default::default(),
        };
        let (whole, whole_errors) =
            build_table_with(1, &objs, &BuildOptions::default(), &Policy::default());
        let mut inc = Incremental::new(BuildOptions::default(), Policy::default());
        inc.replace_services(services);
        inc.replace_slices(slices);
        let (errors, rebuilt) = inc.flush();
        assert_eq!(rebuilt, 4);
        assert_eq!(errors, whole_errors);
        let t = inc.snapshot(1);
        assert_eq!(t.services, whole.services);

        // One slice changes: one Service rebuilt, no problem reported again.
        inc.apply_slice(&slice("a-2", "a", &["10.244.0.9"], "2"));
        let (errors, rebuilt) = inc.flush();
        assert_eq!((errors.len(), rebuilt), (0, 1));
        assert_eq!(
            usable(&inc.snapshot(2), "10.96.0.1"),
            ["10.244.0.1:8080", "10.244.0.9:8080"]
        );

        // The same version again is not a change.
        inc.apply_slice(&slice("a-2", "a", &["10.244.0.9"], "2"));
        assert!(!inc.is_dirty());

        // Deleting the owner of a contested ClusterIP hands it to the other Service.
        inc.delete_service("shop", "b");
        let (errors, rebuilt) = inc.flush();
        assert_eq!((errors.len(), rebuilt), (0, 1));
        let t = inc.snapshot(3);
        assert_eq!(
            t.service_of("10.96.0.2".parse().unwrap()).unwrap().name,
            "c"
        );
        assert_eq!(t.service("shop", "c").unwrap().not_exposed, None);
        assert!(t.service("shop", "b").is_none());

        // A bad slice is reported once and contributes nothing.
        let mut bad = slice("d-1", "d", &["10.244.0.300"], "1");
        inc.apply_slice(&bad);
        let (errors, _) = inc.flush();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "endpoints[0].addresses[0]");
        bad.metadata.resource_version = Some("2".into());
        inc.apply_slice(&bad);
        assert_eq!(
            inc.flush().0.len(),
            0,
            "the same problem is not reported twice"
        );

        // A relist without `a`'s slices and with a changed `d` applies as one change.
        inc.replace_slices(vec![slice("d-1", "d", &["10.244.0.5"], "3")]);
        inc.flush();
        let t = inc.snapshot(4);
        assert!(usable(&t, "10.96.0.1").is_empty());
        assert_eq!(usable(&t, "10.96.0.4"), ["10.244.0.5:8080"]);
    }

    #[test]
    fn slice_without_service_label_and_policy_problems_are_reported() {
        let mut s = slice("x", "a", &["10.244.0.1"], "1");
        s.metadata.labels = None;
        let mut inc = Incremental::new(BuildOptions::default(), Policy::default());
        inc.apply_slice(&s);
        let mut a = svc("a", "10.96.0.1");
        a.metadata.annotations = Some(
            [(
                "clusterway.io/allow-sources".to_string(),
                "nope".to_string(),
            )]
            .into(),
        );
        inc.apply_service(a);
        let (errors, _) = inc.flush();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "EndpointSlice shop/x: metadata.labels[kubernetes.io/service-name]: missing: the slice belongs to no Service",
                "Service shop/a: metadata.annotations[clusterway.io/allow-sources]: \"nope\" is not a CIDR or IP address; no client is allowed",
            ]
        );
        let t = inc.snapshot(1);
        let Lookup::Port(p) = t.lookup("10.96.0.1".parse().unwrap(), 80, Protocol::Tcp) else {
            panic!("exposed");
        };
        assert!(!p.allows("10.0.0.1".parse().unwrap()));

        let mut inc = Incremental::new(
            BuildOptions::default(),
            Policy {
                expose_by_default: false,
                ..Policy::default()
            },
        );
        inc.apply_service(svc("a", "10.96.0.1"));
        inc.flush();
        assert!(matches!(
            inc.snapshot(1).service("shop", "a").unwrap().not_exposed,
            Some(NotExposed::Policy(_))
        ));
    }
}
