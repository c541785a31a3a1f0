# Sourced by the evidence queues. The library (src/dopr) can change under a queue while it runs, so each start
# records the git state it imports: record_library OUT appends it to OUT/LIBRARY.txt (making OUT if needed).
record_library() {
  mkdir -p "$1"
  echo "$(date -u +%FT%TZ) HEAD $(git rev-parse --short HEAD), src/dopr diff sha1 $(git diff HEAD -- src/dopr | sha1sum | cut -c1-12)" >> "$1/LIBRARY.txt"
}
