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
		out = bytes.TrimSpace(out)
		if len(out) == 0 {
			return json.RawMessage("null"), nil
		}
		if !json.Valid(out) {
			return nil, fmt.Errorf("POST %s answered %s with no JSON (starts %.80q)", target, resp.Status, out)
		}
		return json.RawMessage(out), nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return nil, statusError(target, resp.Status, out)
	default:
		return nil, Permanent(statusError(target, resp.Status, out))
	}
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
