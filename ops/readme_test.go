package ops_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jobstream/jobstream/ops"
	"github.com/jobstream/jobstream/schema"
)

// TestReadme: the README's commands run as they are written. In its ```sh
// blocks every jobstream command is spelled bin/jobstream (runnable from the
// repository root after make build), names a real command and passes only
// flags that command has, flags named in the line's comments included; every
// make target exists in the Makefile; every script or file named exists; every
// fuzz target exists; kcat reading a topic stops at its end (-e). Inline commands (`jobstream worker --http-addr ...`)
// name real commands and flags too, and the flag tables name real flags with
// their real environment twins and document every flag of reader and worker.
func TestReadme(t *testing.T) {
	readme := readRepoFile(t, "../README.md")
	cmds := jobstreamFlags(t)
	targets := makeTargets(t, readRepoFile(t, "../Makefile"))

	checkFlags := func(where, cmd string, fl []string) {
		t.Helper()
		known, ok := cmds[cmd]
		if !ok {
			t.Errorf("%s: jobstream has no command %q", where, cmd)
			return
		}
		for _, f := range fl {
			if _, ok := known[f]; !ok && f != "help" {
				t.Errorf("%s: jobstream %s has no flag --%s", where, cmd, f)
			}
		}
	}

	blocks := fencedBlocks(readme, "sh")
	if len(blocks) == 0 {
		t.Fatal("no ```sh blocks in README.md")
	}
	for _, b := range blocks {
		last := "" // the jobstream command a comment-only line continues
		for _, line := range shLines(b.text) {
			where := "README.md:" + strconv.Itoa(b.line+line.n)
			code, comment := splitComment(line.text)
			if strings.TrimSpace(code) == "" {
				if last != "" {
					checkFlags(where, last, flagNames(comment))
				}
				continue
			}
			last = ""
			// A command offered in a comment ("# or: bin/jobstream broker ...").
			if _, offered, ok := strings.Cut(comment, "bin/jobstream "); ok {
				if seg := segments(shellWords(offered))[0]; len(seg) > 0 {
					checkFlags(where, seg[0], argFlags(seg[1:]))
				}
			}
			for _, seg := range segments(shellWords(code)) {
				switch {
				case len(seg) == 0:
				case seg[0] == "jobstream" || strings.HasSuffix(seg[0], "/jobstream") && seg[0] != "bin/jobstream":
					t.Errorf("%s: %q does not run from the repository root; spell it bin/jobstream", where, strings.Join(seg, " "))
				case seg[0] == "bin/jobstream":
					if len(seg) < 2 {
						t.Errorf("%s: bin/jobstream without a command", where)
						continue
					}
					last = seg[1]
					checkFlags(where, seg[1], append(argFlags(seg[2:]), flagNames(comment)...))
				case seg[0] == "make":
					for _, tg := range seg[1:] {
						if !strings.Contains(tg, "=") && !slices.Contains(targets, tg) {
							t.Errorf("%s: the Makefile has no target %q", where, tg)
						}
					}
				case seg[0] == "kcat" && slices.Contains(seg, "-C") && !slices.Contains(seg, "-e") && !slices.Contains(seg, "-c"):
					t.Errorf("%s: %q waits for new messages for ever; pass -e to stop at the end of the topic", where, strings.Join(seg, " "))
				case seg[0] == "go" && len(seg) > 2 && seg[1] == "test":
					checkFuzzTarget(t, where, seg)
				}
				for _, w := range seg {
					if repoPath.MatchString(w) {
						if _, err := os.Stat(filepath.Join("..", w)); err != nil {
							t.Errorf("%s: %s does not exist in the repository", where, w)
						}
					}
				}
			}
		}
	}

	// Inline commands in the prose.
	for _, m := range inlineCommand.FindAllStringSubmatchIndex(readme, -1) {
		span := readme[m[2]:m[3]]
		where := "README.md:" + strconv.Itoa(1+strings.Count(readme[:m[0]], "\n"))
		words := strings.Fields(span)
		if words[1] == "<command>" {
			continue
		}
		if words[0] == "jobstream" && len(flagNames(span)) > 0 {
			t.Errorf("%s: `%s` does not run from the repository root; spell it bin/jobstream", where, span)
		}
		checkFlags(where, words[1], argFlags(words[2:]))
	}

	// The flag tables: each flag exists (for the commands named beside it),
	// its environment twin is the one its --help shows; reader and worker
	// have no undocumented flag.
	documented := map[string]bool{}
	section := ""
	for i, line := range strings.Split(readme, "\n") {
		if strings.HasPrefix(line, "#") {
			section = strings.TrimLeft(line, "# ")
			continue
		}
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		where := "README.md:" + strconv.Itoa(i+1)
		cells := strings.Split(line, "|")
		fl, envs := flagNames(cells[1]), backticked(cells[2])
		in := commandsIn.FindStringSubmatch(cells[1])
		var owners []string
		switch {
		case in != nil:
			owners = strings.Split(strings.ReplaceAll(in[1], " ", ""), ",")
		case section == "Reader options":
			owners = []string{"reader"}
		}
		for k, f := range fl {
			documented[f] = true
			env := ""
			if k < len(envs) {
				env = envs[k]
			}
			found := false
			for cmd, known := range cmds {
				if owners != nil && !slices.Contains(owners, cmd) {
					continue
				}
				twin, ok := known[f]
				if !ok {
					if owners != nil {
						t.Errorf("%s: jobstream %s has no flag --%s", where, cmd, f)
					}
					continue
				}
				found = true
				if twin != env {
					t.Errorf("%s: --%s of jobstream %s has the environment twin %q, the table says %q", where, f, cmd, twin, env)
				}
			}
			if !found && owners == nil {
				t.Errorf("%s: no jobstream command has a flag --%s", where, f)
			}
		}
	}
	for _, cmd := range []string{"reader", "worker"} {
		for f := range cmds[cmd] {
			if !documented[f] {
				t.Errorf("README.md: --%s of jobstream %s is in no flag table", f, cmd)
			}
		}
	}
}

// TestReadmeRolesMatchRolesSQL: the least-privilege snippet in the README
// creates the roles and grants what schema/roles.sql does, statement for
// statement.
func TestReadmeRolesMatchRolesSQL(t *testing.T) {
	readme := readRepoFile(t, "../README.md")
	blocks := fencedBlocks(readme, "sql")
	var snippet string
	for _, b := range blocks {
		if strings.Contains(b.text, "CREATE ROLE jobstream_reader") {
			snippet = b.text
		}
	}
	if snippet == "" {
		t.Fatal("README.md has no ```sql block creating jobstream_reader")
	}
	got, want := sqlStatements(snippet), sqlStatements(schema.RolesSQL)
	for _, s := range want {
		if !slices.Contains(got, s) {
			t.Errorf("README.md's roles snippet lacks %q (schema/roles.sql has it)", s)
		}
	}
	for _, s := range got {
		if !slices.Contains(want, s) {
			t.Errorf("README.md's roles snippet has %q, schema/roles.sql does not", s)
		}
	}
}

var (
	// repoPath is a word naming a file of the repository: a script or a
	// config file given by a relative path.
	repoPath = regexp.MustCompile(`^(\./)?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.(sh|sql|json|yaml)$`)
	// inlineCommand is a jobstream command in backticks in the prose.
	inlineCommand = regexp.MustCompile("`((?:bin/)?jobstream [a-z<][^`]*)`")
	// commandsIn is the "(reader, worker)" after a flag in a table.
	commandsIn = regexp.MustCompile(`\(([a-z, ]+)\)`)
	flagName   = regexp.MustCompile(`(?:^|[\s(\x60,])--([a-z][a-z0-9-]*)`)
)

type block struct {
	line int // of the opening fence
	text string
}

// fencedBlocks returns the README's ```lang blocks.
func fencedBlocks(md, lang string) []block {
	var out []block
	var cur *block
	for i, line := range strings.Split(md, "\n") {
		switch {
		case cur == nil && strings.TrimSpace(line) == "```"+lang:
			cur = &block{line: i + 1}
		case cur != nil && strings.TrimSpace(line) == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
	}
	return out
}

type shLine struct {
	n    int // 1-based within the block
	text string
}

// shLines joins lines continued by a backslash.
func shLines(text string) []shLine {
	var out []shLine
	var acc string
	start := 0
	for i, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if acc == "" {
			start = i + 1
		}
		if strings.HasSuffix(l, "\\") {
			acc += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		out = append(out, shLine{start, acc + l})
		acc = ""
	}
	return out
}

// splitComment splits a shell line at its first # that starts a word
// outside quotes.
func splitComment(line string) (code, comment string) {
	var quote rune
	prev := ' '
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (prev == ' ' || prev == '\t'):
			return line[:i], line[i+1:]
		}
		prev = r
	}
	return line, ""
}

// shellWords splits code into words, honouring quotes (which it removes),
// and makes ; & && | || separate words.
func shellWords(code string) []string {
	var words []string
	var w strings.Builder
	in := false
	var quote rune
	flush := func() {
		if in {
			words = append(words, w.String())
		}
		w.Reset()
		in = false
	}
	for _, r := range code {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t':
			flush()
		case r == ';' || r == '&' || r == '|':
			flush()
			words = append(words, string(r))
		default:
			w.WriteRune(r)
			in = true
		}
	}
	flush()
	return words
}

// segments splits words into simple commands, dropping the shell keywords
// that may start one and leading VAR=value assignments.
func segments(words []string) [][]string {
	var out [][]string
	var cur []string
	for _, w := range words {
		switch {
		case w == ";" || w == "&" || w == "|":
			out = append(out, cur)
			cur = nil
		case len(cur) == 0 && (w == "do" || w == "then" || w == "else" || w == "done" || w == "fi" || w == "export"):
		case len(cur) == 0 && regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`).MatchString(w):
		default:
			cur = append(cur, w)
		}
	}
	return append(out, cur)
}

// argFlags returns the flag names among a command's arguments, up to a
// bare -- (after which come the step command's own).
func argFlags(args []string) []string {
	var out []string
	for _, a := range args {
		if a == "--" {
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			out = append(out, name)
		}
	}
	return out
}

// flagNames returns every --name in free text.
func flagNames(text string) []string {
	var out []string
	for _, m := range flagName.FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	return out
}

func backticked(text string) []string {
	var out []string
	for _, m := range regexp.MustCompile("`([^`]*)`").FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	return out
}

// jobstreamFlags asks the jobstream command for its commands (jobstream
// help) and each command for its flags (jobstream CMD --help), returning
// each flag's environment twin ("" if none).
func jobstreamFlags(t *testing.T) map[string]map[string]string {
	t.Helper()
	help, _ := mainOutput(t, "help")
	cmds := map[string]map[string]string{}
	inList := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(line, "Commands:"):
			inList = true
		case inList && strings.HasPrefix(line, "  "):
			cmds[strings.Fields(line)[0]] = map[string]string{}
		case inList:
			inList = false
		}
	}
	if len(cmds) < 5 {
		t.Fatalf("jobstream help lists %d commands:\n%s", len(cmds), help)
	}
	twin := regexp.MustCompile(`\[\$([A-Z0-9_]+)\]`)
	for name, flags := range cmds {
		out, code := mainOutput(t, name, "--help")
		if code != 0 {
			t.Fatalf("jobstream %s --help exited %d:\n%s", name, code, out)
		}
		cur := ""
		for _, line := range strings.Split(out, "\n") {
			if f, ok := strings.CutPrefix(line, "  -"); ok && f != "" && f[0] != ' ' {
				cur = strings.Fields(f)[0]
				flags[cur] = ""
			}
			if m := twin.FindStringSubmatch(line); m != nil && cur != "" {
				flags[cur] = m[1]
			}
		}
	}
	return cmds
}

// mainOutput runs ops.Main and returns what it printed, on the writers it was
// given and on os.Stdout (where --help prints the flags).
func mainOutput(t *testing.T, args ...string) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	var out bytes.Buffer
	code := ops.Main(context.Background(), args, &out, &out)
	os.Stdout = saved
	w.Close()
	return out.String() + string(<-got), code
}

// makeTargets returns the Makefile's targets.
func makeTargets(t *testing.T, makefile string) []string {
	t.Helper()
	var out []string
	s := bufio.NewScanner(strings.NewReader(makefile))
	target := regexp.MustCompile(`^([a-z][a-z0-9-]*):`)
	for s.Scan() {
		if m := target.FindStringSubmatch(s.Text()); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// checkFuzzTarget checks that go test ./pkg ... -fuzz Name names a fuzz
// function of that package.
func checkFuzzTarget(t *testing.T, where string, seg []string) {
	t.Helper()
	i := slices.Index(seg, "-fuzz")
	if i < 0 || i+1 >= len(seg) {
		return
	}
	pkg, name := seg[2], seg[i+1]
	files, _ := filepath.Glob(filepath.Join("..", pkg, "*_test.go"))
	for _, f := range files {
		if strings.Contains(readRepoFile(t, f), "func "+name+"(") {
			return
		}
	}
	t.Errorf("%s: package %s has no fuzz target %s", where, pkg, name)
}

// sqlStatements returns the CREATE ROLE and GRANT statements of a SQL
// text, comments dropped and spaces normalised, without the IF NOT EXISTS
// guard around them.
func sqlStatements(sql string) []string {
	var out []string
	var lines []string
	for _, l := range strings.Split(sql, "\n") {
		l, _, _ = strings.Cut(l, "--")
		lines = append(lines, l)
	}
	for _, s := range strings.Split(strings.Join(lines, " "), ";") {
		s = strings.Join(strings.Fields(s), " ")
		if i := strings.Index(s, "CREATE ROLE"); i >= 0 {
			out = append(out, s[i:])
		} else if strings.HasPrefix(s, "GRANT") {
			out = append(out, s)
		}
	}
	return out
}

func readRepoFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
