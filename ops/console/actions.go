package console

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/jobstream/jobstream/ops/admin"
)

// action guards an action: it must come from this console's own page (the
// CSRF value it was given, a JSON body, and no other site's Origin) and
// carry the token; it is logged with who asked.
func (c *Console) action(do func(r *http.Request, body actionBody) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := c.allowed(r); err != nil {
			writeJSON(w, err.code, map[string]string{"error": err.msg})
			return
		}
		var body actionBody
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the request body is not an action: " + err.Error()})
			return
		}
		res, err := do(r, body)
		c.cfg.Log.Info("console action", "action", r.URL.Path, "job_id", body.JobID, "step", body.Step,
			"from", body.From, "to", body.To, "dry_run", body.DryRun, "by", who(r), "err", err)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

type refusal struct {
	code int
	msg  string
}

// allowed checks an action request's origin, CSRF value and token.
func (c *Console) allowed(r *http.Request) *refusal {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return &refusal{http.StatusForbidden, "actions come from the console's own page only (Sec-Fetch-Site " + site + ")"}
	}
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host && o != "https://"+r.Host {
		return &refusal{http.StatusForbidden, "actions come from the console's own page only (Origin " + o + ")"}
	}
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		return &refusal{http.StatusUnsupportedMediaType, "an action is a JSON body (Content-Type: application/json)"}
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-CSRF-Token")), []byte(c.csrf)) != 1 {
		return &refusal{http.StatusForbidden, "missing or stale CSRF value: reload the page"}
	}
	if c.cfg.Token == "" {
		return &refusal{http.StatusForbidden, "the console is read-only: start it with --ui-token (JOBSTREAM_UI_TOKEN) to allow actions"}
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Jobstream-Token")), []byte(c.cfg.Token)) != 1 {
		return &refusal{http.StatusUnauthorized, "wrong or missing token: enter the console's --ui-token to act"}
	}
	return nil
}

// who names the asker in logs and replay marks.
func who(r *http.Request) string { return "console:" + r.RemoteAddr }

// actionBody is every action's request.
type actionBody struct {
	JobID  string `json:"job_id,omitempty"`
	Step   string `json:"step,omitempty"`
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
}

func (c *Console) cancel(r *http.Request, b actionBody) (any, error) {
	if b.JobID == "" {
		return nil, errors.New("no job_id given")
	}
	return admin.Cancel(r.Context(), c.cfg.Pool, []string{b.JobID})
}

// retry runs a failed job's failed step again: a replay of that step for
// the one job, recorded in the replay topic as the command line's are.
func (c *Console) retry(r *http.Request, b actionBody) (any, error) {
	j, err := admin.Job(r.Context(), c.cfg.Pool, b.JobID)
	if err != nil {
		return nil, err
	}
	if j.Status != "failed" {
		return nil, fmt.Errorf("job %s is %s at %s, not failed; replay a step to run it again", j.JobID, j.Status, j.Step)
	}
	return admin.Replay(r.Context(), c.cfg.Pool, c.cfg.Kafka, admin.ReplayOptions{Step: j.Step, Deployment: c.cfg.Deployment,
		Jobs: []string{j.JobID}, By: who(r)})
}

// replay replays a step for one job or a time range; DryRun returns the
// jobs it would rewind, for the page to show before the operator confirms.
func (c *Console) replay(r *http.Request, b actionBody) (any, error) {
	o := admin.ReplayOptions{Step: b.Step, Deployment: c.cfg.Deployment, DryRun: b.DryRun, By: who(r)}
	if b.JobID != "" {
		o.Jobs = []string{b.JobID}
	}
	for _, x := range []struct {
		s   string
		dst *admin.Bound
	}{{b.From, &o.From}, {b.To, &o.To}} {
		if x.s == "" {
			continue
		}
		bound, err := admin.ParseBound(x.s)
		if err != nil {
			return nil, err
		}
		*x.dst = bound
	}
	return admin.Replay(r.Context(), c.cfg.Pool, c.cfg.Kafka, o)
}
