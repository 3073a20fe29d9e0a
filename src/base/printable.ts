// Text from a client, made safe for a log line: every control or invisible
// character is shown as an escape, so a request cannot forge a log line
// (a newline), drive an operator's terminal (ESC sequences), or hide text
// (bidi overrides, zero-width characters).

/** C0, DEL and C1 controls, line and paragraph separators, format characters, lone surrogates, private use and unassigned code points. */
const unprintable = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]/gu;

/**
 * `s` with each such character as \xNN (up to U+00FF) or \u{N...}, cut after
 * `charsMax` characters with a note of how many more there were. Backslashes
 * are kept as they are, so applying it twice changes nothing more.
 */
export function printable(s: string, charsMax: number): string {
  const cut = s.length > charsMax;
  const shown = (cut ? s.slice(0, charsMax) : s).replace(unprintable, (c) => {
    const code = c.codePointAt(0) ?? 0;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  });
  return cut ? `${shown}… (${s.length - charsMax} more characters)` : shown;
}
