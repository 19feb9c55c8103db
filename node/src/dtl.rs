//! A subset of Sesam's Data Transformation Language (DTL).
//!
//! A transform `{"type": "dtl", "rules": {"default": [...]}}` runs the
//! `default` rule on every source entity (`_S`) and builds a target entity
//! (`_T`). `_id` and `_deleted` are always copied. Statements:
//!
//! - `["copy", "pattern", ...]`: copy source properties matching a pattern
//!   (`*` wildcard, e.g. `"*"`, `"name"`, `"addr_*"`);
//! - `["add", "prop", EXPR]`: set a target property;
//! - `["remove", "pattern"]`: remove target properties;
//! - `["rename", "from", "to"]`: rename a target property;
//! - `["filter", EXPR]`: drop the entity unless EXPR is truthy.
//!
//! Expressions: `"_S.prop"` and `"_T.prop"` (a source or target property,
//! null when absent), literals (strings, numbers, booleans, null; a string
//! starting with `~:` is the literal rest, e.g. `"~:_S.x"`), and the
//! functions `["eq", A, B]`, `["not", A]`, `["is-null", A]`,
//! `["concat", A, ...]`, `["integer", A]`, `["string", A]`.
//!
//! Rules are compiled when the configuration is validated, so an unknown
//! statement or function is a config error that names its position; an
//! expression that fails on an entity (e.g. `integer` of a non-number) is a
//! [`TransformError`] that fails the pump run with that entity attached.

use serde_json::{Map, Value};

/// A compiled DTL transform.
#[derive(Debug, Clone)]
pub struct Dtl {
    rules: Vec<Statement>,
}

#[derive(Debug, Clone)]
enum Statement {
    Copy(Vec<String>),
    Add(String, Expr),
    Remove(Vec<String>),
    Rename(String, String),
    Filter(Expr),
}

#[derive(Debug, Clone)]
enum Expr {
    Literal(Value),
    Source(String),
    Target(String),
    Eq(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>),
    Concat(Vec<Expr>),
    Integer(Box<Expr>),
    String(Box<Expr>),
}

/// A rule that does not compile; `path` is relative to the transform.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

/// A rule that failed on one entity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (in {path})")]
pub struct TransformError {
    /// Which statement failed, e.g. `rules.default[2]`.
    pub path: String,
    pub message: String,
}

fn cerr(path: &str, message: impl Into<String>) -> CompileError {
    CompileError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn string_arg<'a>(
    args: &'a [Value],
    i: usize,
    path: &str,
    what: &str,
) -> Result<&'a str, CompileError> {
    args.get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| cerr(path, format!("expected {what} as argument {i}")))
}

impl Dtl {
    /// Compiles a transform config object `{"type": "dtl", "rules": {...}}`.
    pub fn compile(transform: &Value) -> Result<Dtl, CompileError> {
        let Value::Object(obj) = transform else {
            return Err(cerr("", "a transform must be an object"));
        };
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "type" | "rules" | "name" | "description" | "comment"
            ) {
                return Err(cerr(key, format!("unknown field `{key}` in a transform")));
            }
        }
        match obj.get("type").and_then(Value::as_str) {
            Some("dtl") => {}
            Some(other) => {
                return Err(cerr(
                    "type",
                    format!("unknown transform type {other:?}; supported: \"dtl\""),
                ))
            }
            None => return Err(cerr("type", "missing transform type")),
        }
        let Some(Value::Object(rules)) = obj.get("rules") else {
            return Err(cerr("rules", "expected an object of named rules"));
        };
        for name in rules.keys() {
            if name != "default" {
                return Err(cerr(
                    &format!("rules.{name}"),
                    "only the \"default\" rule is supported",
                ));
            }
        }
        let Some(Value::Array(stmts)) = rules.get("default") else {
            return Err(cerr("rules.default", "expected a list of statements"));
        };
        let mut out = Vec::with_capacity(stmts.len());
        for (i, s) in stmts.iter().enumerate() {
            out.push(compile_statement(s, &format!("rules.default[{i}]"))?);
        }
        Ok(Dtl { rules: out })
    }

    /// Runs the transform on `source`; `None` when a filter dropped it.
    pub fn apply(
        &self,
        source: &Map<String, Value>,
    ) -> Result<Option<Map<String, Value>>, TransformError> {
        let mut target = Map::new();
        for key in ["_id", "_deleted"] {
            if let Some(v) = source.get(key) {
                target.insert(key.to_string(), v.clone());
            }
        }
        for (i, stmt) in self.rules.iter().enumerate() {
            let path = || format!("rules.default[{i}]");
            match stmt {
                Statement::Copy(patterns) => {
                    for (k, v) in source {
                        if patterns.iter().any(|p| glob(p, k)) {
                            target.insert(k.clone(), v.clone());
                        }
                    }
                }
                Statement::Add(prop, e) => {
                    let v = eval(e, source, &target).map_err(|message| TransformError {
                        path: path(),
                        message,
                    })?;
                    target.insert(prop.clone(), v);
                }
                Statement::Remove(patterns) => {
                    target.retain(|k, _| !patterns.iter().any(|p| glob(p, k)));
                }
                Statement::Rename(from, to) => {
                    if let Some(v) = target.remove(from) {
                        target.insert(to.clone(), v);
                    }
                }
                Statement::Filter(e) => {
                    let v = eval(e, source, &target).map_err(|message| TransformError {
                        path: path(),
                        message,
                    })?;
                    if !truthy(&v) {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(target))
    }
}

fn compile_statement(v: &Value, path: &str) -> Result<Statement, CompileError> {
    let Some((Value::String(op), args)) = v.as_array().and_then(|a| a.split_first()) else {
        return Err(cerr(path, "a statement is a list starting with its name"));
    };
    let strings = |from: usize| -> Result<Vec<String>, CompileError> {
        if args.len() <= from {
            return Err(cerr(path, format!("{op:?} needs at least one pattern")));
        }
        args[from..]
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| cerr(path, format!("{op:?} takes string patterns")))
            })
            .collect()
    };
    let arity = |n: usize| -> Result<(), CompileError> {
        if args.len() != n {
            return Err(cerr(
                path,
                format!("{op:?} takes {n} arguments, got {}", args.len()),
            ));
        }
        Ok(())
    };
    Ok(match op.as_str() {
        "copy" => Statement::Copy(strings(0)?),
        "remove" => Statement::Remove(strings(0)?),
        "add" => {
            arity(2)?;
            let prop = string_arg(args, 0, path, "a property name")?;
            Statement::Add(
                prop.to_string(),
                compile_expr(&args[1], &format!("{path}[2]"))?,
            )
        }
        "rename" => {
            arity(2)?;
            Statement::Rename(
                string_arg(args, 0, path, "a property name")?.to_string(),
                string_arg(args, 1, path, "a property name")?.to_string(),
            )
        }
        "filter" => {
            arity(1)?;
            Statement::Filter(compile_expr(&args[0], &format!("{path}[1]"))?)
        }
        other => {
            return Err(cerr(
                path,
                format!(
                    "unknown DTL statement {other:?}; supported: copy, add, remove, rename, filter"
                ),
            ))
        }
    })
}

fn compile_expr(v: &Value, path: &str) -> Result<Expr, CompileError> {
    match v {
        Value::String(s) => Ok(if let Some(p) = s.strip_prefix("_S.") {
            Expr::Source(p.to_string())
        } else if let Some(p) = s.strip_prefix("_T.") {
            Expr::Target(p.to_string())
        } else if let Some(lit) = s.strip_prefix("~:") {
            Expr::Literal(Value::String(lit.to_string()))
        } else {
            Expr::Literal(v.clone())
        }),
        Value::Array(items) => {
            let Some((Value::String(f), args)) = items.split_first() else {
                return Err(cerr(
                    path,
                    "a function call is a list starting with its name",
                ));
            };
            let sub = |i: usize| compile_expr(&args[i], &format!("{path}[{}]", i + 1));
            let arity = |n: usize| -> Result<(), CompileError> {
                if args.len() != n {
                    return Err(cerr(
                        path,
                        format!("{f:?} takes {n} arguments, got {}", args.len()),
                    ));
                }
                Ok(())
            };
            Ok(match f.as_str() {
                "eq" => {
                    arity(2)?;
                    Expr::Eq(Box::new(sub(0)?), Box::new(sub(1)?))
                }
                "not" => {
                    arity(1)?;
                    Expr::Not(Box::new(sub(0)?))
                }
                "is-null" => {
                    arity(1)?;
                    Expr::IsNull(Box::new(sub(0)?))
                }
                "integer" => {
                    arity(1)?;
                    Expr::Integer(Box::new(sub(0)?))
                }
                "string" => {
                    arity(1)?;
                    Expr::String(Box::new(sub(0)?))
                }
                "concat" => Expr::Concat((0..args.len()).map(sub).collect::<Result<_, _>>()?),
                other => {
                    return Err(cerr(
                        path,
                        format!("unknown DTL function {other:?}; supported: eq, not, is-null, concat, integer, string"),
                    ))
                }
            })
        }
        Value::Object(_) => Err(cerr(path, "objects are not supported as expressions")),
        other => Ok(Expr::Literal(other.clone())),
    }
}

/// `*` wildcard matching in O(pattern x text) time: the classic greedy
/// match that backtracks only to the last `*`, so a hostile pattern such as
/// `a*a*a*a*b` cannot make a run exponential.
fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Array(a) => !a.is_empty() && a.iter().any(truthy),
        _ => true,
    }
}

fn eval(e: &Expr, s: &Map<String, Value>, t: &Map<String, Value>) -> Result<Value, String> {
    Ok(match e {
        Expr::Literal(v) => v.clone(),
        Expr::Source(p) => s.get(p).cloned().unwrap_or(Value::Null),
        Expr::Target(p) => t.get(p).cloned().unwrap_or(Value::Null),
        Expr::Eq(a, b) => Value::Bool(eval(a, s, t)? == eval(b, s, t)?),
        Expr::Not(a) => Value::Bool(!truthy(&eval(a, s, t)?)),
        Expr::IsNull(a) => Value::Bool(eval(a, s, t)?.is_null()),
        Expr::Concat(parts) => {
            let mut out = String::new();
            for p in parts {
                match eval(p, s, t)? {
                    Value::Null => {}
                    Value::String(x) => out.push_str(&x),
                    Value::Array(items) => {
                        for item in items {
                            if let Value::String(x) = item {
                                out.push_str(&x);
                            }
                        }
                    }
                    other => out.push_str(&other.to_string()),
                }
            }
            Value::String(out)
        }
        Expr::Integer(a) => match eval(a, s, t)? {
            Value::Null => Value::Null,
            Value::Number(n) if n.is_i64() || n.is_u64() => Value::Number(n),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 9.0e18 => Value::from(f.trunc() as i64),
                _ => return Err(format!("integer: {n} is out of range")),
            },
            Value::String(x) => match x.trim().parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => {
                    return Err(format!(
                        "integer: cannot convert the string {x:?} to an integer"
                    ))
                }
            },
            Value::Bool(b) => Value::from(i64::from(b)),
            other => {
                return Err(format!(
                    "integer: cannot convert a {} to an integer",
                    type_name(&other)
                ))
            }
        },
        Expr::String(a) => match eval(a, s, t)? {
            Value::Null => Value::Null,
            Value::String(x) => Value::String(x),
            other => Value::String(other.to_string()),
        },
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(rules: Value, entity: Value) -> Result<Option<Value>, TransformError> {
        let dtl = Dtl::compile(&json!({"type": "dtl", "rules": {"default": rules}})).unwrap();
        let Value::Object(m) = entity else {
            panic!("not an object")
        };
        dtl.apply(&m).map(|o| o.map(Value::Object))
    }

    #[test]
    fn statements_and_expressions() {
        let out = run(
            json!([
                ["copy", "*"],
                ["remove", "secret_*"],
                ["rename", "n", "name"],
                ["add", "full", ["concat", "_S.first", "~: ", "_S.last"]],
                ["add", "age", ["integer", "_S.age"]],
                ["add", "age_s", ["string", "_T.age"]],
                ["add", "is_bob", ["eq", "_S.first", "Bob"]],
                ["add", "no_x", ["is-null", "_S.x"]],
                ["add", "lit", "_S"],
            ]),
            json!({"_id": "1", "n": "x", "first": "Bob", "last": "Smith", "age": "42", "secret_a": 1, "secret_b": 2}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            out,
            json!({"_id": "1", "name": "x", "first": "Bob", "last": "Smith", "age": 42,
                   "age_s": "42", "full": "Bob Smith", "is_bob": true, "no_x": true, "lit": "_S"})
        );
    }

    #[test]
    fn filter_drops_and_id_is_always_copied() {
        let rules = json!([
            ["filter", ["not", ["eq", "_S.kind", "skip"]]],
            ["add", "k", "_S.kind"]
        ]);
        assert_eq!(
            run(rules.clone(), json!({"_id": "a", "kind": "skip"})).unwrap(),
            None
        );
        assert_eq!(
            run(
                rules,
                json!({"_id": "b", "kind": "keep", "_deleted": false})
            )
            .unwrap(),
            Some(json!({"_id": "b", "_deleted": false, "k": "keep"}))
        );
    }

    #[test]
    fn integer_of_a_non_number_fails_with_its_position() {
        let err = run(
            json!([["copy", "*"], ["add", "n", ["integer", "_S.n"]]]),
            json!({"_id": "x", "n": "abc"}),
        )
        .unwrap_err();
        assert_eq!(err.path, "rules.default[1]");
        assert!(err.message.contains("\"abc\""), "{}", err.message);
    }

    #[test]
    fn unknown_functions_and_statements_are_compile_errors() {
        let bad_fn =
            json!({"type": "dtl", "rules": {"default": [["add", "x", ["upper", "_S.a"]]]}});
        let e = Dtl::compile(&bad_fn).unwrap_err();
        assert_eq!(e.path, "rules.default[0][2]");
        assert!(e.message.contains("\"upper\""), "{}", e.message);
        let bad_stmt =
            json!({"type": "dtl", "rules": {"default": [["copy", "*"], ["merge", "x"]]}});
        let e = Dtl::compile(&bad_stmt).unwrap_err();
        assert_eq!(e.path, "rules.default[1]");
        assert!(Dtl::compile(&json!({"type": "xslt", "rules": {}})).is_err());
        assert!(
            Dtl::compile(&json!({"type": "dtl", "rules": {"default": [["add", "x"]]}})).is_err()
        );
    }

    #[test]
    fn glob_patterns() {
        assert!(glob("*", "anything"));
        assert!(glob("a*", "abc"));
        assert!(glob("*c", "abc"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abd"));
        assert!(!glob("name", "names"));
        assert!(glob("", ""));
        assert!(!glob("", "a"));
        assert!(glob("**", ""));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "a-b-b-d"));
        assert!(glob("æ*ø", "æbcø"));
        // Regression: the recursive matcher took exponential time on this.
        let hostile = format!("{}b", "a*".repeat(40));
        let text = "a".repeat(10_000);
        let started = std::time::Instant::now();
        assert!(!glob(&hostile, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
