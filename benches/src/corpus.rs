//! Course text that looks like production: real HTML (the Rust books, when
//! installed), else a large generated vocabulary.
//!
//! A repeated string compresses twenty times better than real HTML and would
//! make every size and speed figure a lie.

use std::path::{Path, PathBuf};

/// The books read for descriptions, in this order.
const BOOKS: &[&str] = &[
    "book",
    "reference",
    "nomicon",
    "edition-guide",
    "cargo",
    "rustc",
    "rust-by-example",
    "embedded-book",
    "rustdoc",
];

/// Top-level elements a description may start at (mdBook writes them at
/// the start of a line), so a cut never falls inside a tag.
const BLOCK_STARTS: &[&str] = &[
    "\n<p>",
    "\n<h1",
    "\n<h2",
    "\n<h3",
    "\n<pre>",
    "\n<ul>",
    "\n<ol>",
    "\n<blockquote>",
    "\n<div",
    "\n<table>",
];

/// The text descriptions, titles and summaries are taken from.
pub struct Corpus {
    html: String,
    /// Byte offsets of block starts in `html`, ascending.
    blocks: Vec<usize>,
    /// Where the text came from, for the report.
    pub source: String,
}

impl Corpus {
    /// Loads the toolchain's HTML books (`dir`, or the active toolchain's
    /// `share/doc/rust/html`), else generates text from a vocabulary.
    pub fn load(dir: Option<&Path>) -> Self {
        let dir = dir.map(Path::to_path_buf).or_else(rust_docs);
        if let Some(dir) = dir {
            if let Some(corpus) = Self::from_books(&dir) {
                return corpus;
            }
        }
        Self::generated()
    }

    fn from_books(dir: &Path) -> Option<Self> {
        let mut files = Vec::new();
        for book in BOOKS {
            collect_html(&dir.join(book), &mut files);
        }
        files.sort();
        let mut html = String::new();
        let mut pages = 0;
        for file in &files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            let (Some(start), Some(end)) = (text.find("<main>"), text.find("</main>")) else {
                continue;
            };
            if end > start + 6 {
                html.push_str(&text[start + 6..end]);
                html.push('\n');
                pages += 1;
            }
        }
        // A few megabytes at least, or the windows would repeat too often.
        if html.len() < 4 * 1024 * 1024 {
            return None;
        }
        let blocks = block_starts(&html);
        Some(Corpus {
            source: format!(
                "real HTML: {pages} pages ({:.1} MB) of the HTML books shipped with the Rust toolchain's documentation",
                html.len() as f64 / 1e6
            ),
            html,
            blocks,
        })
    }

    /// Text from a generated vocabulary of about 20,000 words with a Zipf-like
    /// frequency, in paragraphs, lists and code blocks.
    pub fn generated() -> Self {
        let mut rng = SplitMix(0x5eed);
        let syllables = [
            "ka", "ren", "to", "mi", "sol", "ar", "ve", "lin", "qu", "or", "tes", "pa", "ni",
            "gro", "del", "un", "ex", "ma", "ri", "con", "sta", "ber", "fi", "lo", "tran", "sys",
            "mod", "ul", "ent", "ion", "ate", "ic", "al", "er", "ing", "ous", "ment", "ness", "ly",
            "ty",
        ];
        let words: Vec<String> = (0..20_000)
            .map(|_| {
                let n = 1 + rng.below(4) as usize;
                (0..n)
                    .map(|_| syllables[rng.below(syllables.len() as u64) as usize])
                    .collect()
            })
            .collect();
        // Zipf-like: the square of a uniform pick favours the first words.
        let word = |rng: &mut SplitMix| {
            let u = rng.unit();
            &words[((u * u) * words.len() as f64) as usize % words.len()]
        };
        let mut html = String::new();
        while html.len() < 8 * 1024 * 1024 {
            match rng.below(10) {
                0 => {
                    html.push_str("\n<h2>");
                    for _ in 0..(2 + rng.below(5)) {
                        html.push_str(word(&mut rng));
                        html.push(' ');
                    }
                    html.push_str("</h2>");
                }
                1 => {
                    html.push_str("\n<ul>");
                    for _ in 0..(2 + rng.below(5)) {
                        html.push_str("<li>");
                        for _ in 0..(3 + rng.below(9)) {
                            html.push_str(word(&mut rng));
                            html.push(' ');
                        }
                        html.push_str("</li>");
                    }
                    html.push_str("</ul>");
                }
                2 => {
                    html.push_str("\n<pre><code>");
                    for _ in 0..(2 + rng.below(8)) {
                        let (a, b) = (word(&mut rng).clone(), word(&mut rng).clone());
                        let n = rng.below(1000);
                        html.push_str(&format!("let {a} = {b}({n});\n"));
                    }
                    html.push_str("</code></pre>");
                }
                _ => {
                    html.push_str("\n<p>");
                    for i in 0..(20 + rng.below(60)) {
                        if i % 17 == 5 {
                            html.push_str("<code>");
                            html.push_str(word(&mut rng));
                            html.push_str("</code> ");
                        } else {
                            html.push_str(word(&mut rng));
                            html.push(' ');
                        }
                    }
                    html.push_str("</p>");
                }
            }
        }
        let blocks = block_starts(&html);
        Corpus {
            source: "generated text: a 20,000-word vocabulary with Zipf-like frequencies (the Rust toolchain's HTML books were not found)".to_owned(),
            html,
            blocks,
        }
    }

    /// About `bytes` bytes of HTML for course `n`: whole top-level blocks
    /// from a window that starts at a different place for every course.
    pub fn description(&self, n: u64, bytes: usize) -> &str {
        let count = self.blocks.len().max(1) as u64;
        // A large odd stride visits every block before repeating one.
        let first = ((n.wrapping_mul(7_919)) % count) as usize;
        let start = self.blocks.get(first).copied().unwrap_or(0);
        let start = if start + bytes >= self.html.len() {
            0
        } else {
            start
        };
        let wanted = start + bytes;
        let end = match self.blocks.binary_search(&wanted) {
            Ok(i) | Err(i) => self.blocks.get(i).copied().unwrap_or(self.html.len()),
        };
        self.html[start..end].trim()
    }

    /// The text of the first heading (or the first words) of `html`.
    pub fn title_of(html: &str, n: u64) -> String {
        let text = first_text(html, &["<h1", "<h2", "<h3"]).unwrap_or_default();
        let text: String = text
            .split_whitespace()
            .take(8)
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() {
            format!("Course {n}")
        } else {
            text
        }
    }

    /// The first paragraph's text, at most about 240 characters.
    pub fn summary_of(html: &str) -> String {
        let text = first_text(html, &["<p>"]).unwrap_or_default();
        let mut out = String::new();
        for word in text.split_whitespace() {
            if out.len() + word.len() > 240 {
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
        out
    }
}

/// The active toolchain's HTML documentation, when installed.
fn rust_docs() -> Option<PathBuf> {
    let out = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(sysroot.trim()).join("share/doc/rust/html");
    dir.is_dir().then_some(dir)
}

fn collect_html(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_html(&path, out);
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
}

fn block_starts(html: &str) -> Vec<usize> {
    let mut starts: Vec<usize> = BLOCK_STARTS
        .iter()
        .flat_map(|tag| html.match_indices(tag).map(|(i, _)| i + 1))
        .collect();
    starts.sort_unstable();
    starts
}

/// The text inside the first element opened by one of `tags`, tags removed.
fn first_text(html: &str, tags: &[&str]) -> Option<String> {
    let (at, tag) = tags
        .iter()
        .filter_map(|t| html.find(t).map(|i| (i, *t)))
        .min_by_key(|(i, _)| *i)?;
    let name = tag.trim_start_matches('<').trim_end_matches('>');
    let rest = &html[at..];
    let open_end = rest.find('>')? + 1;
    let close = rest[open_end..].find(&format!("</{name}>"))? + open_end;
    Some(strip_tags(&rest[open_end..close]))
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

/// A small deterministic generator (SplitMix64): the same data every run.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_descriptions_are_whole_blocks_of_about_the_asked_size() {
        let corpus = Corpus::generated();
        let a = corpus.description(1, 10_240);
        let b = corpus.description(2, 10_240);
        assert!(a.len() >= 10_000 && a.len() < 20_000, "{}", a.len());
        assert!(a.starts_with('<'));
        assert_ne!(a, b, "every course gets its own text");
    }

    #[test]
    fn titles_and_summaries_come_from_the_html() {
        let html = "<h2 id=\"x\"><a href=\"#x\">Slots &amp; publications</a></h2>\n<p>WAL is the <em>log</em>.</p>";
        assert_eq!(Corpus::title_of(html, 3), "Slots & publications");
        assert_eq!(Corpus::summary_of(html), "WAL is the log.");
    }
}
