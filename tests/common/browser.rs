//! A headless Chromium for tests, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`): the browser reads commands from its fd 3 and writes
//! answers and events to its fd 4, each message one JSON text ended by a NUL byte. No
//! port is opened, so nothing but this process can drive it; the pages it loads are the
//! loopback hubs of the test.
//!
//! Every wait has a deadline and polls the page's state (never a fixed sleep), so a
//! loaded machine makes the test slower, not flaky. Exceptions thrown by the page's
//! scripts and `console.error` calls are collected in [`Browser::errors`].

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The browser binary: `NAVE_CHROMIUM`, or `chromium` on the PATH (Debian's package).
fn binary() -> String {
    std::env::var("NAVE_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

pub struct Browser {
    child: Child,
    to_browser: File,
    answers: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Script exceptions and console errors of the page, as text.
    pub errors: Arc<Mutex<Vec<String>>>,
    profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    /// Starts the browser with one blank page of `width` x `height` CSS pixels.
    pub fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let log = File::create(profile.path().join("chromium.log")).expect("log file");
        let mut command = Command::new(binary());
        command
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                // Tests run as root in containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-domain-reliability",
                "--no-pings",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on
        // descriptors this process owns. The pipe ends are first copied above 9, so that
        // moving one onto 3 cannot close the other, then onto 3 and 4 (dup2 clears
        // close-on-exec on the copy).
        unsafe {
            command.pre_exec(move || {
                let high_in = libc::fcntl(cmd_read, libc::F_DUPFD_CLOEXEC, 10);
                let high_out = libc::fcntl(out_write, libc::F_DUPFD_CLOEXEC, 10);
                if high_in < 0 || high_out < 0 || libc::dup2(high_in, 3) < 0 || libc::dup2(high_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}): the console test needs Chromium (Debian: apt-get install chromium; scripts/test installs it)",
                binary()
            )
        });
        // SAFETY: these descriptors are ours, each wrapped once; the child's ends are
        // closed here so that the reader sees end-of-file when the browser exits.
        let (to_browser, from_browser) = unsafe {
            libc::close(cmd_read);
            libc::close(out_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(out_read))
        };
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (tx, answers) = std::sync::mpsc::channel();
        {
            let errors = errors.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(from_browser);
                let mut buf = Vec::new();
                while reader.read_until(0, &mut buf).map(|n| n > 0).unwrap_or(false) {
                    if buf.last() == Some(&0) {
                        buf.pop();
                    }
                    if let Ok(msg) = serde_json::from_slice::<Value>(&buf) {
                        if msg.get("id").is_some() {
                            if tx.send(msg).is_err() {
                                break;
                            }
                        } else {
                            note_event(&msg, &errors);
                        }
                    }
                    buf.clear();
                }
            });
        }
        let mut b = Browser { child, to_browser, answers, next_id: 0, session: None, errors, profile };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().expect("target id").to_string();
        let attached = b.call("Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        b.session = Some(attached["sessionId"].as_str().expect("session id").to_string());
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends one command (to the page once attached) and waits for its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        if let Err(e) = self.to_browser.write_all(&bytes) {
            panic!("{method}: the browser is gone ({e})\n{}", self.log_tail());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(answer) if answer["id"] == id => {
                    if let Some(e) = answer.get("error") {
                        panic!("{method}: {e}");
                    }
                    return answer["result"].clone();
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no answer within 60 s\n{}", self.log_tail()),
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: the browser exited\n{}", self.log_tail()),
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            panic!("loading {url}: {e}");
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it gives something other than null, false, 0 or "";
    /// returns that value. Panics with `what` and the last value after `within`.
    pub fn wait_for(&mut self, what: &str, within: Duration, expression: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // An expression that throws (the element is not there yet) counts as not yet.
            let r = self.call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            );
            let v = if r.get("exceptionDetails").is_some() { Value::Null } else { r["result"]["value"].clone() };
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() >= deadline {
                let body = self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''");
                panic!(
                    "{what}: not within {within:?} (last value {v}); the page shows:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page (beyond the viewport when it is longer), written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let m = self.call("Page.getLayoutMetrics", json!({}));
        let size = &m["cssContentSize"];
        let (w, h) = (size["width"].as_f64().unwrap_or(1280.0), size["height"].as_f64().unwrap_or(800.0));
        let clip = json!({"x": 0, "y": 0, "width": w, "height": h.min(4000.0), "scale": 1});
        let r =
            self.call("Page.captureScreenshot", json!({"format": "png", "clip": clip, "captureBeyondViewport": true}));
        let png = decode_base64(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The end of the browser's own log (its stderr), for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("chromium's log ends:\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session = None;
        self.next_id += 1;
        let close = json!({"id": self.next_id, "method": "Browser.close", "params": {}});
        let mut bytes = serde_json::to_vec(&close).expect("json");
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Script exceptions and `console.error` of the page go to `errors`.
fn note_event(msg: &Value, errors: &Mutex<Vec<String>>) {
    let text = match msg["method"].as_str() {
        Some("Runtime.exceptionThrown") => {
            let d = &msg["params"]["exceptionDetails"];
            format!("exception: {} {}", d["text"], d["exception"]["description"])
        }
        Some("Runtime.consoleAPICalled") if msg["params"]["type"] == "error" => {
            format!("console.error: {}", msg["params"]["args"])
        }
        _ => return,
    };
    errors.lock().expect("errors").push(text);
}

/// Standard base64 (the screenshot's encoding), padding optional.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

#[test]
fn base64_decodes_what_chromium_sends() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGVsbG8h"), b"hello!");
    assert_eq!(decode_base64("aGk"), b"hi");
}
