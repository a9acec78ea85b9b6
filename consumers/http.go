package consumers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// HTTP returns a Handler that POSTs the job as JSON to rawURL and takes the
// response as the result: a 2xx answer is done, its body (JSON; empty is
// null) the result; a 4xx answer is a permanent failure, except 408 and 429,
// which ask to be retried; a 5xx answer, a timeout or a connection error is
// retried. The error of a failure holds the status and the start of the
// body. Requests carry Idempotency-Key (job_id/step/attempt) and
// X-Jobstream-Job-Id, -Step, -Attempt and, on a GPU member, -Gpu headers.
// In both headers a plain job id (printable ASCII without '%' and without
// a space at either end) goes as it is and any other is percent-encoded
// (RFC 3986), so any id fits and url.PathUnescape of the header gives it
// back; the body holds the id as it is. Config.Timeout bounds each attempt.
//
// A rawURL that is not an absolute http or https URL gives a Handler that
// New refuses with the reason.
func HTTP(rawURL string) Handler {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return invalid(fmt.Errorf("step URL %q is not an absolute http:// or https:// URL", rawURL))
	}
	client := &http.Client{}
	target := u.String()
	return func(ctx context.Context, job Job) (json.RawMessage, error) {
		return post(ctx, client, target, job)
	}
}

func post(ctx context.Context, client *http.Client, target string, job Job) (json.RawMessage, error) {
	body, err := json.Marshal(job)
	if err != nil {
		return nil, Permanent(fmt.Errorf("encode job: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, Permanent(fmt.Errorf("build request: %w", err))
	}
	attempt := strconv.Itoa(job.Attempt)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	id := headerJobID(job.JobID)
	req.Header.Set("Idempotency-Key", id+"/"+job.Step+"/"+attempt)
	req.Header.Set("X-Jobstream-Job-Id", id)
	req.Header.Set("X-Jobstream-Step", job.Step)
	req.Header.Set("X-Jobstream-Attempt", attempt)
	if job.GPU != "" {
		req.Header.Set("X-Jobstream-Gpu", job.GPU)
	}
	out, err := do(ctx, client, req, target)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return json.RawMessage("null"), nil
	}
	if !json.Valid(out) {
		return nil, fmt.Errorf("POST %s answered with no JSON (starts %.80q)", target, out)
	}
	return json.RawMessage(out), nil
}

// do sends req and returns the body of a 2xx answer, trimmed; any other
// answer is an error: a 4xx (but 408 and 429) a permanent one.
func do(ctx context.Context, client *http.Client, req *http.Request, target string) ([]byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("step stopped: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("POST %s: %w", target, unwrapURLError(err))
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxStdout+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("step stopped: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("POST %s: read the answer: %w", target, err)
	}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		if len(out) > maxStdout {
			return nil, fmt.Errorf("POST %s answered over %d bytes; a result must be smaller", target, maxStdout)
		}
		return bytes.TrimSpace(out), nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return nil, statusError(target, resp.Status, out)
	default:
		return nil, Permanent(statusError(target, resp.Status, out))
	}
}

// HTTPBatch returns a BatchHandler that POSTs a batch as a JSON array of
// jobs to rawURL (header X-Jobstream-Step, and X-Jobstream-Batch with the
// count) and takes from a 2xx answer a JSON array of one answer per job,
// in any order, as a serve process writes them: {"job_id": …, "result":
// …} or {"job_id": …, "error": "…", "permanent": true|false}. A job the
// answer leaves out fails, retried. A 4xx answer (but 408 and 429) fails
// every job of the batch permanently; a 5xx answer, a timeout or a
// connection error fails each to be retried.
//
// A rawURL that is not an absolute http or https URL gives a BatchHandler
// that New refuses with the reason.
func HTTPBatch(rawURL string) BatchHandler {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return invalidBatch{fmt.Errorf("step URL %q is not an absolute http:// or https:// URL", rawURL)}
	}
	client, target := &http.Client{}, u.String()
	return BatchFunc(func(ctx context.Context, jobs []Job) []Result {
		return postBatch(ctx, client, target, jobs)
	})
}

func postBatch(ctx context.Context, client *http.Client, target string, jobs []Job) []Result {
	results := make([]Result, len(jobs))
	all := func(err error) []Result {
		for i := range results {
			results[i].Err = err
		}
		return results
	}
	body, err := json.Marshal(jobs)
	if err != nil {
		return all(Permanent(fmt.Errorf("encode jobs: %w", err)))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return all(Permanent(fmt.Errorf("build request: %w", err)))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Jobstream-Step", jobs[0].Step)
	req.Header.Set("X-Jobstream-Batch", strconv.Itoa(len(jobs)))
	if jobs[0].GPU != "" {
		req.Header.Set("X-Jobstream-Gpu", jobs[0].GPU)
	}
	out, err := do(ctx, client, req, target)
	if err != nil {
		return all(err)
	}
	var answers []serveAnswer
	if err := json.Unmarshal(out, &answers); err != nil {
		return all(fmt.Errorf("POST %s answered a batch with no JSON array of answers (starts %.80q): %v", target, out, err))
	}
	byID := make(map[string]serveAnswer, len(answers))
	for _, a := range answers {
		if a.JobID != nil {
			byID[*a.JobID] = a
		}
	}
	for i, j := range jobs {
		a, ok := byID[j.JobID]
		switch {
		case !ok:
			results[i].Err = fmt.Errorf("POST %s answered the batch without an answer for job %q", target, j.JobID)
		default:
			o := a.outcome()
			results[i] = Result{Value: o.result, Err: o.err}
		}
	}
	return results
}

// headerJobID returns job id as the HTTP handler puts it in the
// X-Jobstream-Job-Id and Idempotency-Key headers. A plain id (printable
// ASCII without '%' and without a space at either end) goes as it is; any
// other is percent-encoded as in RFC 3986: each byte outside printable
// ASCII, each space and each '%' becomes %XX (upper-case hex). So the value
// is always a valid header value, url.PathUnescape of it gives back the id
// (PathUnescape, not QueryUnescape, which would turn '+' into a space), and
// two ids never give the same value: only encoded ids hold a '%'.
func headerJobID(id string) string {
	plain := id == "" || (id[0] != ' ' && id[len(id)-1] != ' ')
	for i := 0; plain && i < len(id); i++ {
		plain = id[i] >= ' ' && id[i] <= '~' && id[i] != '%'
	}
	if plain {
		return id
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		if c := id[i]; c > ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

func statusError(target, status string, body []byte) error {
	msg := fmt.Sprintf("POST %s answered %s", target, status)
	if b := strings.TrimSpace(string(body)); b != "" {
		if len(b) > 512 {
			b = b[:512] + "..."
		}
		msg += ": " + b
	}
	return errors.New(msg)
}

// unwrapURLError drops the "Post URL:" prefix net/http puts on every error.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
