#!/usr/bin/env bash
# Demo data for a fresh database, written through the command API (never
# straight into PostgreSQL), so that it flows through replication and the
# projector like any other write:
#   8 users (half of them with a company), 6 courses in 3 categories (one with
#   a ~10 KB description_html), and a few orders.
#
#   COMMAND_API_URL   default http://127.0.0.1:8081
#   ADMIN_TOKEN       sent as a bearer token when set (course writes need it)
#
# `bash deploy/local.sh run` calls this once per database. Run it again on the
# same database and the first user fails with 409 email_taken.
set -euo pipefail

API="${COMMAND_API_URL:-http://127.0.0.1:8081}"

die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }
command -v curl >/dev/null || die "curl is required"

# json_str TEXT prints TEXT as a JSON string literal.
json_str() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\t'/\\t}"
  s="${s//$'\r'/\\r}"
  printf '"%s"' "$s"
}

# json_id BODY prints the top-level "id" of a JSON response.
json_id() {
  if command -v jq >/dev/null; then
    jq -er '.id' <<<"$1"
  else
    # Responses are objects whose first "id" key is the top-level one.
    sed -n 's/^[^{]*{[^{]*"id"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$1" | head -n 1
  fi
}

# post PATH BODY [HEADER...] POSTs JSON and prints the response body; any
# status but 2xx stops the script with the status and body.
post() {
  local path="$1" body="$2"
  shift 2
  local args=(-sS -X POST -H 'Content-Type: application/json' --data-binary @-
    -w '\n%{http_code}' "$API$path")
  local header
  for header in "$@"; do args+=(-H "$header"); done
  if [[ -n "${ADMIN_TOKEN:-}" ]]; then args+=(-H "Authorization: Bearer $ADMIN_TOKEN"); fi
  local out status
  out="$(curl "${args[@]}" <<<"$body")" || die "POST $path: cannot reach $API"
  status="${out##*$'\n'}"
  out="${out%$'\n'*}"
  if [[ "$status" != 2?? ]]; then
    die "POST $path answered $status: $out"
  fi
  printf '%s' "$out"
}

# ---------------------------------------------------------------------------
# A long, varied course description: headings, paragraphs and lists made of
# words drawn from a list by a small seeded generator, so that every run
# produces the same ~10 KB of HTML and it does not compress like a repeated
# string.
# ---------------------------------------------------------------------------

WORDS=(
  data pipeline query index schema table column row transaction commit
  replication snapshot cache latency throughput partition shard replica
  leader follower consensus quorum lock deadlock isolation serializable
  vacuum bloat checkpoint write-ahead log archive backup restore recovery
  migration rollout canary feature flag metric trace alert dashboard budget
  service endpoint request response payload header cookie session token
  backend frontend browser render layout component state reducer effect
  hook router handler middleware worker queue stream batch window watermark
  event order customer invoice refund discount coupon checkout inventory
  seat enrollment lecture module chapter exercise quiz certificate mentor
  practical hands-on real-world production scalable reliable observable
  careful thorough gentle focused advanced beginner intermediate modern
  explore build measure design debug profile deploy monitor refactor test
  understand compare explain practise review improve optimise automate
  team project codebase library framework runtime compiler memory thread
  async future channel buffer socket protocol network packet bandwidth
)
# The generator keeps its state in globals (R, SENTENCE) rather than printing,
# because a $(...) subshell would not advance the seed.
SEED=20240601
R=0
rand() { # rand N: sets R to a number in [0, N)
  SEED=$(((SEED * 1103515245 + 12345) % 2147483648))
  R=$(((SEED >> 8) % $1))
}
SENTENCE=""
sentence() { # sets SENTENCE to 6 to 17 words with some inline markup
  local n len w
  SENTENCE=""
  rand 12
  len=$((6 + R))
  for ((n = 0; n < len; n++)); do
    rand "${#WORDS[@]}"
    w="${WORDS[$R]}"
    if [[ "$n" -eq 0 ]]; then w="${w^}"; fi
    rand 12
    case "$R" in
      0) w="<strong>$w</strong>" ;;
      1) w="<em>$w</em>" ;;
      2) if [[ "$n" -gt 0 ]]; then w="<code>$w</code>"; fi ;;
    esac
    SENTENCE+="${SENTENCE:+ }$w"
  done
  rand 6
  case "$R" in
    0) SENTENCE+="?" ;;
    1) SENTENCE+="!" ;;
    *) SENTENCE+="." ;;
  esac
}
PHRASE=""
phrase() { # sets PHRASE to 3 to 5 plain words, for headings
  local n len
  rand 3
  len=$((3 + R))
  PHRASE=""
  for ((n = 0; n < len; n++)); do
    rand "${#WORDS[@]}"
    PHRASE+="${PHRASE:+ }${WORDS[$R]}"
  done
  PHRASE="${PHRASE^}"
}
LONG_HTML=""
long_description() { # sets LONG_HTML to about 10 KB of HTML
  local section=1 paragraphs items sentences n i p
  LONG_HTML='<article class="course-description">'$'\n'
  LONG_HTML+='<p class="lead">Everything the course covers, part by part, with the exercises you will do.</p>'$'\n'
  while [[ "${#LONG_HTML}" -lt 9000 ]]; do
    phrase
    LONG_HTML+="<h2 id=\"part-$section\">Part $section: $PHRASE</h2>"$'\n'
    rand 3
    paragraphs=$((2 + R))
    for ((n = 0; n < paragraphs; n++)); do
      rand 4
      sentences=$((2 + R))
      p=""
      for ((i = 0; i < sentences; i++)); do
        sentence
        p+="${p:+ }$SENTENCE"
      done
      LONG_HTML+="<p>$p</p>"$'\n'
    done
    rand 3
    case "$R" in
      0)
        rand 4
        items=$((3 + R))
        LONG_HTML+='<ul>'$'\n'
        for ((n = 0; n < items; n++)); do
          sentence
          LONG_HTML+="  <li>$SENTENCE</li>"$'\n'
        done
        LONG_HTML+='</ul>'$'\n'
        ;;
      1)
        sentence
        LONG_HTML+="<blockquote><p>$SENTENCE</p><footer>&mdash; a former student</footer></blockquote>"$'\n'
        ;;
      2)
        rand 90
        LONG_HTML+="<pre><code>SELECT id, title FROM courses WHERE category = 'backend' ORDER BY id LIMIT $((10 + R));</code></pre>"$'\n'
        ;;
    esac
    section=$((section + 1))
  done
  LONG_HTML+='<p><a href="https://example.com/syllabus">Full syllabus</a> &amp; <a href="https://example.com/faq">FAQ</a>.</p>'$'\n'
  LONG_HTML+='</article>'
}

# ---------------------------------------------------------------------------

printf '[demo] loading demo data through %s\n' "$API"

USERS=(
  "minji.kim@example.com|Kim Minji|Hanbit Soft"
  "junho.lee@example.com|Lee Junho|"
  "seoyeon.park@example.com|Park Seoyeon|Daehan Logistics"
  "dohyun.choi@example.com|Choi Dohyun|"
  "jiwoo.jung@example.com|Jung Jiwoo|Hanbit Soft"
  "yuna.kang@example.com|Kang Yuna|"
  "hyunwoo.cho@example.com|Cho Hyunwoo|Saebyeok Games"
  "sora.yoon@example.com|Yoon Sora|"
)
user_ids=()
for entry in "${USERS[@]}"; do
  IFS='|' read -r email name company <<<"$entry"
  body="{\"email\":$(json_str "$email"),\"name\":$(json_str "$name")"
  if [[ -n "$company" ]]; then body+=",\"company\":$(json_str "$company")"; fi
  body+="}"
  id="$(json_id "$(post /v1/users "$body")")" || die "no id in the response for user $email"
  user_ids+=("$id")
done
printf '[demo] users: %s\n' "${user_ids[*]}"

# title|summary|category|instructor|price_krw
COURSES=(
  "Rust for Backend Engineers|Ownership, async and axum, from zero to a service in production.|backend|Han Jisoo|129000"
  "PostgreSQL Internals|MVCC, WAL, vacuum and logical replication, explained with experiments.|backend|Oh Taeyang|99000"
  "Event-Driven Architecture|CQRS, projections and read-your-writes without the buzzwords.|backend|Han Jisoo|149000"
  "Modern CSS Layout|Grid, flexbox and container queries for real pages.|frontend|Seo Eunji|59000"
  "React State Management|When to lift, when to cache, when to reach for a store.|frontend|Baek Minho|79000"
  "Statistics for Product Teams|A/B tests, confidence intervals and the mistakes everyone makes.|data|Ryu Hana|0"
)
course_ids=()
long_description
long_html="$LONG_HTML"
n=0
for entry in "${COURSES[@]}"; do
  IFS='|' read -r title summary category instructor price <<<"$entry"
  if [[ "$n" -eq 2 ]]; then
    html="$long_html"
  else
    html="<p>$summary</p><ul><li>Video lectures</li><li>Exercises with solutions</li><li>Lifetime access</li></ul>"
  fi
  body="{\"title\":$(json_str "$title"),\"summary\":$(json_str "$summary")"
  body+=",\"description_html\":$(json_str "$html"),\"category\":$(json_str "$category")"
  body+=",\"instructor\":$(json_str "$instructor"),\"price_krw\":$price}"
  id="$(json_id "$(post /v1/courses "$body")")" || die "no id in the response for course $title"
  course_ids+=("$id")
  n=$((n + 1))
done
printf '[demo] courses: %s (course %s has a %d-byte description)\n' \
  "${course_ids[*]}" "${course_ids[2]}" "${#long_html}"

# user index|course indexes (space-separated)
ORDERS=(
  "0|0 2"
  "1|0"
  "2|1 2"
  "3|3 4"
  "4|0 1 2"
  "6|2"
)
n=1
for entry in "${ORDERS[@]}"; do
  IFS='|' read -r u cs <<<"$entry"
  list=""
  for c in $cs; do list+="${list:+,}${course_ids[$c]}"; done
  body="{\"user_id\":${user_ids[$u]},\"course_ids\":[$list]}"
  id="$(json_id "$(post /v1/orders "$body" "Idempotency-Key: demo-$n")")" \
    || die "no id in the response for order demo-$n"
  printf '[demo] order %s: user %s bought courses %s\n' "$id" "${user_ids[$u]}" "$list"
  n=$((n + 1))
done
printf '[demo] done\n'
