//! A small W3C WebDriver client for the console's browser tests: a
//! session of headless Chromium through [`ChromeDriver`], with the few
//! commands the tests use (navigate, find, click, type, read, run a
//! script, cookies).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::engines::ChromeDriver;

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    base: String,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Opens a headless Chromium of `width` x `height`.
    pub async fn open(driver: &ChromeDriver, width: u32, height: u32) -> Result<Browser, String> {
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{}/session", driver.url()))
            .json(&driver.capabilities(width, height))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let id = r["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session: {r}"))?;
        Ok(Browser {
            http,
            base: format!("{}/session/{id}", driver.url()),
        })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let r = req.send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    pub async fn url(&self) -> Result<String, String> {
        Ok(self
            .call("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The first element matching the CSS selector, if any.
    pub async fn find(&self, css: &str) -> Result<Option<Element>, String> {
        Ok(self.find_all(css).await?.into_iter().next())
    }

    /// Every element matching the CSS selector.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element(id.to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css).await? {
                return Ok(e);
            }
            if Instant::now() > deadline {
                return Err(format!("no element {css:?} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> Result<(), String> {
        self.call("POST", &format!("/element/{}/click", e.0), None)
            .await
            .map(|_| ())
    }

    pub async fn clear(&self, e: &Element) -> Result<(), String> {
        self.call("POST", &format!("/element/{}/clear", e.0), None)
            .await
            .map(|_| ())
    }

    /// Types `text` into the element (`\u{E007}` is Enter).
    pub async fn type_text(&self, e: &Element, text: &str) -> Result<(), String> {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(|_| ())
    }

    /// The element's rendered text.
    pub async fn text(&self, e: &Element) -> Result<String, String> {
        Ok(self
            .call("GET", &format!("/element/{}/text", e.0), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The element's property (e.g. `value`).
    pub async fn property(&self, e: &Element, name: &str) -> Result<Value, String> {
        self.call("GET", &format!("/element/{}/property/{name}", e.0), None)
            .await
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns
    /// its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({
                "script": format!(
                    "const done = arguments[arguments.length - 1]; Promise.resolve((async () => {{ {script} }})()).then(done, (e) => done({{error: String(e)}}));"
                ),
                "args": args
            })),
        )
        .await
    }

    /// The page's cookies as the browser keeps them.
    pub async fn cookies(&self) -> Result<Vec<Value>, String> {
        Ok(self
            .call("GET", "/cookie", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Saves a PNG of the page as it shows now to `path` (directories
    /// made as needed).
    pub async fn screenshot(&self, path: &std::path::Path) -> Result<(), String> {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| e.to_string())
    }

    /// Ends the session (closes the browser).
    pub async fn close(self) {
        let _ = self.call("DELETE", "", None).await;
    }
}
