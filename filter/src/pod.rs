//! Where the pod name comes from, decided once at configure time.

use crate::config::check_pod_name;

/// Value used when no source knows the pod name: obviously not a real pod.
pub const PLACEHOLDER_POD: &str = "unknown-pod";

/// Property `["xds","node","metadata","NAME"]` (Envoy >= 1.33), serialized
/// the way the ABI wants it (`\0`-separated).
pub const XDS_NODE_NAME_PATH: &[u8] = b"xds\0node\0metadata\0NAME";
/// Property `["node","metadata","NAME"]`: older Envoys.
pub const NODE_NAME_PATH: &[u8] = b"node\0metadata\0NAME";
/// Set on the istio-proxy container; reaches the VM through
/// `vmConfig.env: [{name: POD_NAME, valueFrom: HOST}]`.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// A place the pod name can come from, in lookup order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSource {
    /// `pod_name` in pluginConfig.
    Config,
    /// Property `xds.node.metadata.NAME`.
    XdsNodeMetadata,
    /// Property `node.metadata.NAME`.
    NodeMetadata,
    /// Environment variable `POD_NAME`.
    Env,
    /// Nothing found: [`PLACEHOLDER_POD`].
    Placeholder,
}

impl PodSource {
    /// Lookup order; [`PodSource::Placeholder`] is the fallback, not a source.
    pub const ORDER: [PodSource; 4] = [
        PodSource::Config,
        PodSource::XdsNodeMetadata,
        PodSource::NodeMetadata,
        PodSource::Env,
    ];

    /// How the start-up log line names the source.
    pub fn describe(self) -> &'static str {
        match self {
            PodSource::Config => "pluginConfig pod_name",
            PodSource::XdsNodeMetadata => "node metadata NAME (xds.node.metadata.NAME)",
            PodSource::NodeMetadata => "node metadata NAME (node.metadata.NAME)",
            PodSource::Env => "env POD_NAME",
            PodSource::Placeholder => "placeholder: no source had it",
        }
    }
}

/// The pod name the filter will stamp, and what was skipped on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub source: PodSource,
    /// Sources that had a value unusable as a header value, with the reason.
    pub rejected: Vec<(PodSource, String)>,
}

/// Takes the first usable value from `lookup`, asked in [`PodSource::ORDER`]
/// and only until one answers (host lookups are not free).
pub fn resolve(mut lookup: impl FnMut(PodSource) -> Option<Vec<u8>>) -> Resolved {
    let mut rejected = Vec::new();
    for source in PodSource::ORDER {
        // Empty counts as absent (the SDK returns None for empty properties).
        let Some(bytes) = lookup(source).filter(|b| !b.is_empty()) else {
            continue;
        };
        let checked = String::from_utf8(bytes)
            .map_err(|_| "is not UTF-8".to_owned())
            .and_then(|name| check_pod_name(&name).map(|()| name));
        match checked {
            Ok(name) => {
                return Resolved {
                    name,
                    source,
                    rejected,
                };
            }
            Err(why) => rejected.push((source, why)),
        }
    }
    Resolved {
        name: PLACEHOLDER_POD.to_owned(),
        source: PodSource::Placeholder,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::RefCell;
    use std::rc::Rc;

    /// Which sources `resolve` asked, in order.
    type Asked = Rc<RefCell<Vec<PodSource>>>;
    /// (available values, expected name, expected source, sources asked)
    type Case<'a> = (
        &'a [(PodSource, &'a [u8])],
        &'a str,
        PodSource,
        &'a [PodSource],
    );

    fn lookup_from(
        values: &[(PodSource, &[u8])],
    ) -> (impl FnMut(PodSource) -> Option<Vec<u8>>, Asked) {
        let values: Vec<(PodSource, Vec<u8>)> =
            values.iter().map(|(s, v)| (*s, v.to_vec())).collect();
        let asked = Asked::default();
        let log = asked.clone();
        let lookup = move |source| {
            log.borrow_mut().push(source);
            values
                .iter()
                .find(|(s, _)| *s == source)
                .map(|(_, v)| v.clone())
        };
        (lookup, asked)
    }

    #[test]
    fn first_source_with_a_value_wins() {
        use PodSource::*;
        let cases: &[Case] = &[
            (
                &[
                    (Config, b"override"),
                    (XdsNodeMetadata, b"meta"),
                    (Env, b"env"),
                ],
                "override",
                Config,
                &[Config],
            ),
            (
                &[
                    (XdsNodeMetadata, b"server-1"),
                    (NodeMetadata, b"old"),
                    (Env, b"env"),
                ],
                "server-1",
                XdsNodeMetadata,
                &[Config, XdsNodeMetadata],
            ),
            (
                &[(NodeMetadata, b"server-old"), (Env, b"env")],
                "server-old",
                NodeMetadata,
                &[Config, XdsNodeMetadata, NodeMetadata],
            ),
            (
                &[(Env, b"server-env")],
                "server-env",
                Env,
                &PodSource::ORDER,
            ),
            (
                &[(XdsNodeMetadata, b""), (Env, b"server-env")],
                "server-env",
                Env,
                &PodSource::ORDER,
            ),
            (&[], PLACEHOLDER_POD, Placeholder, &PodSource::ORDER),
        ];
        for (values, name, source, asked) in cases {
            let (lookup, log) = lookup_from(values);
            let resolved = resolve(lookup);
            assert_eq!(resolved.name, *name);
            assert_eq!(resolved.source, *source);
            assert!(resolved.rejected.is_empty());
            assert_eq!(log.borrow().as_slice(), *asked);
        }
    }

    #[test]
    fn unusable_values_are_skipped_with_a_reason() {
        use PodSource::*;
        let (lookup, _) = lookup_from(&[
            (XdsNodeMetadata, b"bad name"),
            (NodeMetadata, &[0xff, 0xfe]),
            (Env, b"server-env"),
        ]);
        let resolved = resolve(lookup);
        assert_eq!(resolved.name, "server-env");
        assert_eq!(resolved.source, Env);
        assert_eq!(
            resolved
                .rejected
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [XdsNodeMetadata, NodeMetadata]
        );
        assert!(resolved.rejected[1].1.contains("UTF-8"));
    }
}
