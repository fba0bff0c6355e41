//! Decoding of `routes[].cache`.

use serde_json::Value;

use super::check_header_name;
use crate::Duration;
use crate::cache::*;
use crate::decode::{Decode, Decoder, Fields};
use crate::resilience::ByteSize;

/// The largest object a route may store: bodies are held in memory whole.
const MAX_OBJECT: u64 = 64 << 20;

impl Decode for Cache {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["memory_percent", "max_object", "vary", "authorized", "heuristic_percent", "coalesce_timeout"],
            d,
        )?;
        let memory = f.req::<f64>("memory_percent", d).and_then(|p| {
            if p > 0.0 && p <= 100.0 {
                Some(p)
            } else {
                d.error(
                    &f.path("memory_percent"),
                    format!("{p} is out of range: a percentage above 0, at most 100"),
                );
                None
            }
        });
        let max_object = f.opt::<ByteSize>("max_object", d).and_then(|b| match b {
            Some(ByteSize(0)) => {
                d.error(&f.path("max_object"), "must be above 0; remove the cache block to turn caching off");
                Err(())
            }
            Some(ByteSize(n)) if n > MAX_OBJECT => {
                d.error(
                    &f.path("max_object"),
                    format!("{n} bytes is more than the 64MiB an object may hold"),
                );
                Err(())
            }
            b => Ok(b),
        });
        let vary = match f.raw("vary") {
            None => Ok(None),
            Some(_) => {
                let list = f.list::<String>("vary", d);
                if list.len() > MAX_CACHE_VARY {
                    d.error(&f.path("vary"), format!("{} fields; at most {MAX_CACHE_VARY}", list.len()));
                }
                for (i, h) in list.iter().enumerate() {
                    if let Some(h) = h {
                        check_header_name(h, &format!("{}[{i}]", f.path("vary")), d);
                    }
                }
                list.into_iter().collect::<Option<Vec<_>>>().map(Some).ok_or(())
            }
        };
        let authorized = f.opt::<bool>("authorized", d);
        let heuristic = f.opt::<f64>("heuristic_percent", d).and_then(|p| match p {
            Some(p) if !(0.0..=100.0).contains(&p) => {
                d.error(&f.path("heuristic_percent"), format!("{p} is out of range 0 to 100"));
                Err(())
            }
            p => Ok(p),
        });
        let coalesce = f.opt::<Duration>("coalesce_timeout", d).and_then(|t| match t {
            Some(t) if t.get() > std::time::Duration::from_secs(60) => {
                d.error(&f.path("coalesce_timeout"), "at most 60s: a waiting request holds its client");
                Err(())
            }
            t => Ok(t),
        });
        Some(Cache {
            memory_percent: memory?,
            max_object: max_object.ok()?,
            vary: vary.ok()?,
            authorized: authorized.ok()?,
            heuristic_percent: heuristic.ok()?,
            coalesce_timeout: coalesce.ok()?,
        })
    }
}
