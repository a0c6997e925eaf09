package main

import (
	"flag"
	"os"
	"strings"
	"testing"
)

// The README's configuration table and the example config must name every
// flag and key, so that documentation cannot silently fall behind.
func TestDocsCoverEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example := defaultConfig()
	if err := loadConfigFile("acrouter.example.toml", &example); err != nil {
		t.Fatalf("the example config does not load: %v", err)
	}
	exampleText, err := os.ReadFile("acrouter.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	docs := registerFlags(flag.NewFlagSet("", flag.ContinueOnError), new(config))
	for _, d := range docs {
		if !strings.Contains(string(readme), "`--"+d.flag+"`") {
			t.Errorf("README.md does not document --%s", d.flag)
		}
		if !strings.Contains(string(readme), "`"+d.key+"`") {
			t.Errorf("README.md does not document key %s", d.key)
		}
		leaf := d.key[strings.LastIndex(d.key, ".")+1:]
		if !strings.Contains(string(exampleText), leaf+" =") {
			t.Errorf("acrouter.example.toml lacks key %s", d.key)
		}
	}
}
