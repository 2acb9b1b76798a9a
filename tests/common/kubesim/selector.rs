//! Label and field selectors, as `labelSelector=` and `fieldSelector=` carry them.
//!
//! Label grammar (apimachinery `labels.Parse`): comma-separated requirements `k=v`, `k==v`,
//! `k!=v`, `k in (a,b)`, `k notin (a)`, `k` (exists), `!k` (does not exist). Field selectors
//! support `=`, `==` and `!=` on the fields each resource lists.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn set(v: &str) -> Option<Vec<String>> {
    let v = v.trim();
    let inner = v.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
    )
}

/// Parse a label selector; an error is the text of the real server's 400.
pub fn parse_labels(s: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for term in split_top(s) {
        let t = term.trim();
        let bad = || format!("unable to parse requirement: found '{t}', expected: identifier");
        let req = if let Some(k) = t.strip_prefix('!') {
            Req::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = t.split_once(" notin ") {
            Req::NotIn(k.trim().to_string(), set(v).ok_or_else(bad)?)
        } else if let Some((k, v)) = t.split_once(" in ") {
            Req::In(k.trim().to_string(), set(v).ok_or_else(bad)?)
        } else if let Some((k, v)) = t.split_once("!=") {
            Req::Ne(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            Req::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            Req::Eq(k.trim().to_string(), v.trim().to_string())
        } else {
            Req::Exists(t.to_string())
        };
        let key = match &req {
            Req::Eq(k, _)
            | Req::Ne(k, _)
            | Req::In(k, _)
            | Req::NotIn(k, _)
            | Req::Exists(k)
            | Req::NotExists(k) => k,
        };
        if !valid_key(key) {
            return Err(bad());
        }
        out.push(req);
    }
    Ok(out)
}

pub fn labels_match(reqs: &[Req], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v.as_str()),
        Req::Ne(k, v) => get(k) != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

/// One field requirement: (field path, equal?, value).
pub type FieldReq = (String, bool, String);

/// Parse a field selector against the fields `known` for the resource.
pub fn parse_fields(s: &str, known: &[&str]) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for term in s.split(',') {
        let t = term.trim();
        let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = t.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = t.split_once('=') {
            (k, true, v)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{t}'"));
        };
        let k = k.trim();
        if !known.contains(&k) {
            return Err(format!("field label not supported: {k}"));
        }
        out.push((k.to_string(), eq, v.trim().to_string()));
    }
    Ok(out)
}

pub fn fields_match(reqs: &[FieldReq], obj: &Value) -> bool {
    reqs.iter().all(|(path, eq, want)| {
        let mut cur = obj;
        for part in path.split('.') {
            cur = &cur[part];
        }
        let have = cur.as_str().unwrap_or("");
        (have == want) == *eq
    })
}
