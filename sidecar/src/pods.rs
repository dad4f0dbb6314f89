//! The pods of `istio/base/` as the sidecars see them: their labels (what a
//! WasmPlugin or Sidecar `selector` is matched against) and Kubernetes-like
//! names.

/// The server pods' `app` label: also the node's service cluster
/// (`server.<namespace>`).
pub const SERVER_APP: &str = "server";
/// The pod template labels in `istio/base/` (server.yaml, client-grpc.yaml).
pub const SERVER_POD_LABELS: [(&str, &str); 2] = [("app", SERVER_APP), ("version", "v1")];
pub const CLIENT_POD_LABELS: [(&str, &str); 2] = [("app", "client-grpc"), ("version", "v1")];

/// Kubernetes-like pod names: `<deployment>-<replicaset hash>-<5 chars>`.
pub fn pod_names(deployment: &str, count: usize, seed: u64) -> Vec<String> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64: good enough for names.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
    };
    let hash: String = (0..9).map(|_| next()).collect();
    (0..count)
        .map(|_| {
            format!(
                "{deployment}-{hash}-{}",
                (0..5).map(|_| next()).collect::<String>()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_look_like_a_deployments_and_follow_the_seed() {
        let names = pod_names("server", 3, 42);
        assert_eq!(names, pod_names("server", 3, 42));
        assert_ne!(names, pod_names("server", 3, 44));
        let hash = names[0].split('-').nth(1).unwrap();
        for name in &names {
            let parts: Vec<&str> = name.split('-').collect();
            assert_eq!((parts[0], parts[1], parts[2].len()), ("server", hash, 5));
        }
    }
}
