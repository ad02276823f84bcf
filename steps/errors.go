package steps

import (
	"context"
	"errors"
	"net"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// retryable reports whether err is worth another attempt: the far side
// was busy, slow or not up yet, not wrong.
func retryable(err error) bool {
	var ne net.Error
	var re *RetryableError
	switch {
	case errors.As(err, &re):
		return true
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EPIPE):
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	case apierrors.IsConflict(err), apierrors.IsServerTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err),
		apierrors.IsTimeout(err):
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
			return true
		}
	}
	return false
}

// RetryableError marks a failure the far side reported as temporary (an
// HTTP 5xx or 429 from an API, a daemon still starting): Classify says
// retryable.
type RetryableError struct{ Err error }

func (e *RetryableError) Error() string { return e.Err.Error() }
func (e *RetryableError) Unwrap() error { return e.Err }

// Retry wraps err as a *RetryableError (nil stays nil).
func Retry(err error) error {
	if err == nil {
		return nil
	}
	return &RetryableError{Err: err}
}
