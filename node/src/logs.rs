//! Container logs on disk, in the CRI format the kubelet uses (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`),
//! one file per container start: `<pod dir>/<container>/<restart>.log`. Files are size-capped and rotated
//! once (`.log.1`), so a chatty guest can never fill the disk; a `.done` marker tells followers the container
//! ended.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use skiff_shim::{OutputSink, Stream};
use tokio::sync::mpsc;

/// Per container start, the current file is rotated at this size and one older file kept: 20 MiB at most,
/// the kubelet's default `containerLogMaxSize` of 10 MiB.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// A line longer than this is written as partial (`P`) records, as CRI runtimes do.
const MAX_LINE: usize = 16 * 1024;

/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The log of one container start; implements the shims' output sink.
pub struct ContainerLog {
    path: PathBuf,
    state: Mutex<LogState>,
}

struct LogState {
    file: Option<File>,
    written: u64,
    partial: [Vec<u8>; 2],
}

impl ContainerLog {
    /// Opens (appending) the log of start number `restart` of a container whose logs live in `dir`.
    pub fn create(dir: &Path, restart: u32) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{restart}.log"));
        let _ = fs::remove_file(done_marker(&path));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self { path, state: Mutex::new(LogState { file: Some(file), written, partial: [Vec::new(), Vec::new()] }) })
    }

    /// Writes what is left of unterminated lines and marks the log finished for followers.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut state.partial[index(stream)]);
            if !rest.is_empty() {
                self.record(&mut state, stream, "F", &rest);
            }
        }
        state.file = None;
        let _ = File::create(done_marker(&self.path));
    }

    fn record(&self, state: &mut LogState, stream: Stream, tag: &str, text: &[u8]) {
        if state.written >= MAX_FILE_BYTES {
            let _ = fs::rename(&self.path, self.path.with_extension("log.1"));
            state.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
            state.written = 0;
        }
        let Some(file) = state.file.as_mut() else { return };
        let name = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let mut line = format!("{} {name} {tag} ", timestamp(jiff::Timestamp::now())).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        // A failed log write must not fail the container; the kubelet drops lines the same way.
        if file.write_all(&line).is_ok() {
            state.written += line.len() as u64;
        }
    }
}

impl OutputSink for ContainerLog {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = std::mem::take(&mut state.partial[index(stream)]);
        pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(newline) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = pending[start..start + newline].to_vec();
            self.record(&mut state, stream, "F", &line);
            start += newline + 1;
        }
        let mut rest = pending.split_off(start);
        while rest.len() > MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.record(&mut state, stream, "P", &rest);
            rest = tail;
        }
        state.partial[index(stream)] = rest;
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn done_marker(path: &Path) -> PathBuf {
    path.with_extension("done")
}

/// RFC 3339 with nanoseconds, as CRI log lines carry.
fn timestamp(when: jiff::Timestamp) -> String {
    when.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string()
}

/// What `kubectl logs` asked for.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub limit_bytes: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("previous terminated container \"{0}\" not found")]
    NoPrevious(String),
    #[error("container \"{0}\" has no logs yet")]
    NoLogs(String),
    #[error("cannot read logs")]
    Io(#[from] std::io::Error),
}

/// The start numbers that have a log in `dir`, ascending.
fn starts(dir: &Path) -> Vec<u32> {
    let mut starts: Vec<u32> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    starts.sort_unstable();
    starts
}

/// Streams a container's log as `kubectl logs` shows it. `dir` is the container's log directory.
pub fn read(dir: &Path, container: &str, query: LogQuery) -> Result<mpsc::Receiver<Bytes>, LogError> {
    let starts = starts(dir);
    let start = if query.previous {
        *starts.iter().rev().nth(1).ok_or_else(|| LogError::NoPrevious(container.to_string()))?
    } else {
        *starts.last().ok_or_else(|| LogError::NoLogs(container.to_string()))?
    };
    let path = dir.join(format!("{start}.log"));
    let (tx, rx) = mpsc::channel(64);
    let follow = query.follow && !query.previous;
    tokio::task::spawn_blocking(move || {
        let _ = stream_file(&path, &query, follow, &tx);
    });
    Ok(rx)
}

fn stream_file(path: &Path, query: &LogQuery, follow: bool, tx: &mpsc::Sender<Bytes>) -> std::io::Result<()> {
    let mut lines: Vec<String> = Vec::new();
    for file in [path.with_extension("log.1"), path.to_path_buf()] {
        if let Ok(file) = File::open(&file) {
            lines.extend(BufReader::new(file).lines().map_while(Result::ok));
        }
    }
    let mut offset = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let skip = query.tail_lines.map_or(0, |n| lines.len().saturating_sub(n));
    let mut budget = query.limit_bytes.unwrap_or(usize::MAX);
    for line in &lines[skip..] {
        if !send_line(line, query, &mut budget, tx) {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated
        }
        if len > offset {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    break; // a line still being written: read it whole next time
                }
                offset += line.len() as u64;
                if !send_line(line.trim_end_matches('\n'), query, &mut budget, tx) {
                    return Ok(());
                }
                line.clear();
            }
        } else if done_marker(path).exists() || tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Sends one CRI line as kubectl shows it; false when the reader is gone or the byte budget is spent.
fn send_line(line: &str, query: &LogQuery, budget: &mut usize, tx: &mpsc::Sender<Bytes>) -> bool {
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    let text = parts.next().unwrap_or("");
    if let Some(since) = query.since
        && time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
    {
        return true;
    }
    let mut out = String::new();
    if query.timestamps {
        out.push_str(time);
        out.push(' ');
    }
    out.push_str(text);
    if tag == "F" {
        out.push('\n');
    }
    let mut bytes = out.into_bytes();
    if bytes.len() > *budget {
        bytes.truncate(*budget);
    }
    *budget -= bytes.len();
    tx.blocking_send(Bytes::from(bytes)).is_ok() && *budget > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut rx: mpsc::Receiver<Bytes>) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn lines_are_split_tailed_and_kept_per_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = ContainerLog::create(dir.path(), 0).unwrap();
        first.write(Stream::Stdout, b"one\ntw");
        first.write(Stream::Stderr, b"err\n");
        first.write(Stream::Stdout, b"o\nthree");
        first.finish();
        let all = collect(read(dir.path(), "c", LogQuery::default()).unwrap()).await;
        assert_eq!(all, "one\nerr\ntwo\nthree\n");
        let tail =
            collect(read(dir.path(), "c", LogQuery { tail_lines: Some(2), ..LogQuery::default() }).unwrap()).await;
        assert_eq!(tail, "two\nthree\n");
        let stamped =
            collect(read(dir.path(), "c", LogQuery { timestamps: true, ..LogQuery::default() }).unwrap()).await;
        assert!(stamped.lines().all(|l| l.split(' ').next().unwrap().parse::<jiff::Timestamp>().is_ok()), "{stamped}");

        assert!(matches!(
            read(dir.path(), "c", LogQuery { previous: true, ..LogQuery::default() }),
            Err(LogError::NoPrevious(_))
        ));
        let second = ContainerLog::create(dir.path(), 1).unwrap();
        second.write(Stream::Stdout, b"again\n");
        second.finish();
        assert_eq!(collect(read(dir.path(), "c", LogQuery::default()).unwrap()).await, "again\n");
        let previous =
            collect(read(dir.path(), "c", LogQuery { previous: true, ..LogQuery::default() }).unwrap()).await;
        assert_eq!(previous, "one\nerr\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn follow_streams_until_the_container_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(ContainerLog::create(dir.path(), 0).unwrap());
        log.write(Stream::Stdout, b"first\n");
        let mut rx = read(dir.path(), "c", LogQuery { follow: true, ..LogQuery::default() }).unwrap();
        assert_eq!(rx.recv().await.unwrap(), "first\n");
        log.write(Stream::Stdout, b"second\n");
        assert_eq!(rx.recv().await.unwrap(), "second\n");
        log.finish();
        assert!(rx.recv().await.is_none(), "follow ends when the container does");
    }

    #[test]
    fn a_full_file_rotates_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = ContainerLog::create(dir.path(), 0).unwrap();
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..25 {
            log.write(Stream::Stdout, &line);
            log.write(Stream::Stdout, b"\n");
        }
        log.finish();
        let current = fs::metadata(dir.path().join("0.log")).unwrap().len();
        let rotated = fs::metadata(dir.path().join("0.log.1")).unwrap().len();
        assert!(current <= MAX_FILE_BYTES + 2 * 1024 * 1024 && rotated <= MAX_FILE_BYTES + 2 * 1024 * 1024);
        assert!(current + rotated < 3 * MAX_FILE_BYTES, "total stays capped");
    }
}
