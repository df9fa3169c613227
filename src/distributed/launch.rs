//! Where this process stands in a multi-process run: the variables torchrun sets for each worker
//! (and a Slurm script sets by hand from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; see
//! docs/DISTRIBUTED.md), read and checked together.

use std::fmt;

/// The six variables, in the order the messages list them.
pub const VARIABLES: [&str; 6] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// One worker of a torchrun-style launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process among all (0..world).
    pub rank: usize,
    pub world: usize,
    /// This process among those of its machine (0..local_world): its GPU's index.
    pub local_rank: usize,
    pub local_world: usize,
    /// Where rank 0 serves the rendezvous (c10d's TCPStore).
    pub master_addr: String,
    pub master_port: u16,
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} of {} (local rank {} of {}), rendezvous at {}:{}",
            self.rank,
            self.world,
            self.local_rank,
            self.local_world,
            self.master_addr,
            self.master_port
        )
    }
}

impl Launch {
    /// The launch this process is part of: None where none of the variables is set (a plain
    /// single-process run); an error naming what is wrong where some are set but not all, or
    /// disagree.
    pub fn from_env() -> anyhow::Result<Option<Launch>> {
        Launch::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Launch::from_env`], with the variables looked up by `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Launch>> {
        let values: Vec<Option<String>> = VARIABLES.iter().map(|name| get(name)).collect();
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let missing: Vec<&str> = VARIABLES
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            let set: Vec<String> = VARIABLES
                .iter()
                .zip(&values)
                .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={v}")))
                .collect();
            anyhow::bail!(
                "distributed launch: {} set but {} missing; torchrun sets all six ({}), and a \
                 script that starts the ranks itself (Slurm) must too: docs/DISTRIBUTED.md",
                set.join(" "),
                missing.join(", "),
                VARIABLES.join(", ")
            );
        }
        let value = |i: usize| values[i].as_deref().expect("checked above").trim();
        let number = |i: usize| -> anyhow::Result<usize> {
            value(i).parse().map_err(|_| {
                anyhow::anyhow!(
                    "distributed launch: {}={:?} is not a non-negative integer",
                    VARIABLES[i],
                    value(i)
                )
            })
        };
        let launch = Launch {
            rank: number(0)?,
            world: number(1)?,
            local_rank: number(2)?,
            local_world: number(3)?,
            master_addr: value(4).to_string(),
            master_port: value(5).parse().map_err(|_| {
                anyhow::anyhow!(
                    "distributed launch: MASTER_PORT={:?} is not a port (1-65535)",
                    value(5)
                )
            })?,
        };
        let l = &launch;
        let problem = if l.world == 0 || l.local_world == 0 {
            Some("WORLD_SIZE and LOCAL_WORLD_SIZE must be at least 1".to_string())
        } else if l.rank >= l.world {
            Some(format!(
                "RANK={} is not below WORLD_SIZE={}",
                l.rank, l.world
            ))
        } else if l.local_rank >= l.local_world {
            Some(format!(
                "LOCAL_RANK={} is not below LOCAL_WORLD_SIZE={}",
                l.local_rank, l.local_world
            ))
        } else if l.local_world > l.world {
            Some(format!(
                "LOCAL_WORLD_SIZE={} is larger than WORLD_SIZE={}",
                l.local_world, l.world
            ))
        } else if l.master_addr.is_empty() {
            Some("MASTER_ADDR is empty".to_string())
        } else if l.master_port == 0 {
            Some("MASTER_PORT=0 is not a port (1-65535)".to_string())
        } else {
            None
        };
        match problem {
            Some(p) => anyhow::bail!("distributed launch: {p}"),
            None => Ok(Some(launch)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(pairs: &[(&str, &str)]) -> Result<Option<Launch>, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|name| map.get(name).cloned()).map_err(|e| e.to_string())
    }

    const TORCHRUN: [(&str, &str); 6] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "4"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn reads_what_torchrun_sets() {
        assert_eq!(launch(&[]).unwrap(), None);
        let l = launch(&TORCHRUN).unwrap().unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.local_world), (3, 8, 1, 4));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("10.0.0.1", 29500));
    }

    #[test]
    fn names_what_is_missing_or_inconsistent() {
        let err = launch(&TORCHRUN[..4]).unwrap_err();
        assert!(err.contains("MASTER_ADDR, MASTER_PORT missing"), "{err}");
        assert!(err.contains("RANK=3"), "{err}");
        let with = |key: &str, value: &str| {
            let mut pairs = TORCHRUN.to_vec();
            pairs.iter_mut().find(|(k, _)| *k == key).unwrap().1 = value;
            launch(&pairs).unwrap_err()
        };
        assert!(with("RANK", "8").contains("RANK=8 is not below WORLD_SIZE=8"));
        assert!(with("RANK", "x").contains("RANK=\"x\" is not a non-negative integer"));
        assert!(with("LOCAL_RANK", "4").contains("LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4"));
        assert!(with("LOCAL_WORLD_SIZE", "9").contains("larger than WORLD_SIZE=8"));
        assert!(with("MASTER_PORT", "70000").contains("not a port"));
        assert!(with("MASTER_PORT", "0").contains("not a port"));
        assert!(with("WORLD_SIZE", "0").contains("at least 1"));
    }
}
