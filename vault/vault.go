// Package vault seals legacy passwords with a key the admin provides
// (AES-256-GCM), for the opt-in credential vault: captures resume after a
// restart and captured accounts keep following the legacy server without
// their users logging in. docs/CONTRACT.md, invariant 6: reversible credentials
// only sealed, only when asked for.
package vault

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Vault seals and opens secrets bound to an account name.
type Vault struct {
	aead cipher.AEAD
}

// keyLen is AES-256's key length.
const keyLen = 32

// Load reads the key file: 32 bytes raw, or 64 hex digits, or base64 of 32
// bytes (a final newline allowed). The file must not be readable by group
// or others.
func Load(path string) (*Vault, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("vault key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("vault key %s: readable by others (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vault key: %w", err)
	}
	key, err := parseKey(raw)
	if err != nil {
		return nil, fmt.Errorf("vault key %s: %w", path, err)
	}
	return New(key)
}

func parseKey(raw []byte) ([]byte, error) {
	if len(raw) == keyLen {
		return raw, nil
	}
	text := strings.TrimSpace(string(raw))
	if k, err := hex.DecodeString(text); err == nil && len(k) == keyLen {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(text); err == nil && len(k) == keyLen {
		return k, nil
	}
	return nil, errors.New("not a 256-bit key (32 raw bytes, 64 hex digits or base64 of 32 bytes; e.g. head -c 32 /dev/urandom > key)")
}

// New builds a vault from a 32-byte key.
func New(key []byte) (*Vault, error) {
	if len(key) != keyLen {
		return nil, fmt.Errorf("vault: key of %d bytes, want %d", len(key), keyLen)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Vault{aead: aead}, nil
}

// Seal encrypts secret for account: a random nonce, then the ciphertext;
// the account name is authenticated with it, so a sealed secret cannot be
// moved to another account.
func (v *Vault) Seal(account, secret string) []byte {
	nonce := make([]byte, v.aead.NonceSize(), v.aead.NonceSize()+len(secret)+v.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(fmt.Sprintf("vault: no randomness: %v", err)) // crypto/rand does not fail on Linux
	}
	return v.aead.Seal(nonce, nonce, []byte(secret), []byte(strings.ToLower(account)))
}

// ErrOpen: the sealed secret does not open with this key for this account.
var ErrOpen = errors.New("vault: sealed secret does not open (another key or account, or damaged)")

// Open decrypts what Seal produced for account.
func (v *Vault) Open(account string, sealed []byte) (string, error) {
	n := v.aead.NonceSize()
	if len(sealed) < n+v.aead.Overhead() {
		return "", ErrOpen
	}
	plain, err := v.aead.Open(nil, sealed[:n], sealed[n:], []byte(strings.ToLower(account)))
	if err != nil {
		return "", ErrOpen
	}
	return string(plain), nil
}
