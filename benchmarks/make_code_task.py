"""Write the built-in code task: short Python function problems scored by the ``python_tests`` reward.

Each row is ``{"prompt": "Write a Python function `name(args)` that ... Reply with only the code in a
```python block.", "tests": ["assert name(...) == ...", ...], "entry_point": "name"}``. Every problem here has
a reference solution (kept in this script, not in the data); a test's expected value is what the reference
returns for that input, and each reference is then run through the sandbox (``run_program``) and must pass
all its tests, so a row whose tests are wrong is never written. Problems are string and list utilities and
small arithmetic; a seeded shuffle puts :data:`N_EVAL` of them in the held-out file and the rest in train
(no function appears in both). Running it again writes the same files.

    .venv/bin/python benchmarks/make_code_task.py
"""

from __future__ import annotations

import json
import random
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agilerl_selfsft.rewards.sandbox import run_program

OUT_DIR = Path(__file__).resolve().parents[1] / "agilerl_selfsft" / "data" / "builtin" / "code"
PROMPT = "Write a Python function `{signature}` that {description}. Reply with only the code in a ```python block."
N_EVAL, SEED = 40, 0

# (signature, what it does, reference solution, the arguments of each test call)
PROBLEMS: list[tuple[str, str, str, list[str]]] = [
    # --- strings ---
    ("reverse_string(s)", "returns the string `s` reversed", """
def reverse_string(s):
    return s[::-1]
""", ["'hello'", "''", "'ab c'", "'racecar'"]),
    ("count_vowels(s)", "returns how many vowels (a, e, i, o, u, in either case) the string `s` contains", """
def count_vowels(s):
    return sum(c in 'aeiouAEIOU' for c in s)
""", ["'hello'", "'AEIOU'", "'rhythm'", "''", "'Programming Is Fun'"]),
    ("is_palindrome(s)", ("returns True when `s` reads the same backwards as forwards, ignoring case and every "
     "character that is not a letter or a digit, and False otherwise"), """
def is_palindrome(s):
    t = [c.lower() for c in s if c.isalnum()]
    return t == t[::-1]
""", ["'Racecar'", "'A man, a plan, a canal: Panama'", "'hello'", "''", "'ab2a'"]),
    ("capitalize_words(s)", ("returns `s` with the first letter of each space-separated word in upper case and the "
     "rest of the word in lower case"), """
def capitalize_words(s):
    return ' '.join(w.capitalize() for w in s.split(' '))
""", ["'hello world'", "'PYTHON is FUN'", "'a'", "''"]),
    ("reverse_words(s)", ("returns the words of `s` (separated by whitespace) in reverse order, joined by single "
     "spaces"), """
def reverse_words(s):
    return ' '.join(s.split()[::-1])
""", ["'hello world'", "'one two  three'", "'single'", "''"]),
    ("count_words(s)", "returns the number of whitespace-separated words in `s`", """
def count_words(s):
    return len(s.split())
""", ["'hello world'", "'  many   spaces here '", "''", "'one'"]),
    ("remove_spaces(s)", "returns `s` with every space character removed", """
def remove_spaces(s):
    return s.replace(' ', '')
""", ["'a b c'", "'  lead and trail  '", "'none'", "''"]),
    ("char_frequency(s)", "returns a dict mapping each character of `s` to the number of times it occurs", """
def char_frequency(s):
    out = {}
    for c in s:
        out[c] = out.get(c, 0) + 1
    return out
""", ["'hello'", "''", "'aaa'", "'abcab'"]),
    ("most_common_char(s)", ("returns the character that occurs most often in the non-empty string `s`; on a tie, "
     "the one that appears first in `s`"), """
def most_common_char(s):
    return max(s, key=lambda c: (s.count(c), -s.index(c)))
""", ["'hello'", "'abcabc'", "'z'", "'mississippi'"]),
    ("is_anagram(a, b)", ("returns True when the strings `a` and `b` are anagrams of each other, ignoring case and "
     "spaces"), """
def is_anagram(a, b):
    norm = lambda t: sorted(t.replace(' ', '').lower())
    return norm(a) == norm(b)
""", ["'listen', 'silent'", "'Dormitory', 'dirty room'", "'abc', 'abd'", "'', ''"]),
    ("first_unique_char(s)", ("returns the index of the first character of `s` that occurs exactly once in `s`, or "
     "-1 when there is none"), """
def first_unique_char(s):
    for i, c in enumerate(s):
        if s.count(c) == 1:
            return i
    return -1
""", ["'leetcode'", "'loveleetcode'", "'aabb'", "''"]),
    ("longest_word(s)", ("returns the longest whitespace-separated word of `s` (the first one on a tie), or '' when "
     "there are no words"), """
def longest_word(s):
    best = ''
    for w in s.split():
        if len(w) > len(best):
            best = w
    return best
""", ["'the quick brown fox'", "'a bb cc'", "''", "'hello'"]),
    ("camel_to_snake(s)", ("converts a camelCase identifier `s` to snake_case (each upper-case letter becomes an "
     "underscore followed by that letter in lower case)"), """
def camel_to_snake(s):
    return ''.join('_' + c.lower() if c.isupper() else c for c in s)
""", ["'helloWorld'", "'camelCaseString'", "'simple'", "'aB'"]),
    ("snake_to_camel(s)", ("converts a snake_case identifier `s` to camelCase (the first word stays as it is, each "
     "later word is capitalized, the underscores are removed)"), """
def snake_to_camel(s):
    first, *rest = s.split('_')
    return first + ''.join(w.capitalize() for w in rest)
""", ["'hello_world'", "'snake_case_string'", "'simple'", "'a_b_c'"]),
    ("count_substring(s, sub)", ("returns how many times the non-empty string `sub` occurs in `s`, counting "
     "overlapping occurrences"), """
def count_substring(s, sub):
    return sum(s.startswith(sub, i) for i in range(len(s)))
""", ["'aaaa', 'aa'", "'hello', 'l'", "'abc', 'd'", "'abababa', 'aba'"]),
    ("compress_string(s)", ("returns the run-length encoding of `s`: each run of the same character becomes the "
     "character followed by the length of the run (for example 'aaab' becomes 'a3b1')"), """
def compress_string(s):
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] + str(j - i))
        i = j
    return ''.join(out)
""", ["'aaabbc'", "'abc'", "''", "'zzzzzzzzzzzz'"]),
    ("expand_runs(s)", ("expands a run-length encoded string `s`, made of letters each followed by a count of one or "
     "more digits (for example 'a3b1' becomes 'aaab')"), """
def expand_runs(s):
    out, i = [], 0
    while i < len(s):
        c, j = s[i], i + 1
        while j < len(s) and s[j].isdigit():
            j += 1
        out.append(c * int(s[i + 1:j]))
        i = j
    return ''.join(out)
""", ["'a3b1'", "'x10'", "''", "'a1b2c3'"]),
    ("is_pangram(s)", ("returns True when `s` contains every letter of the English alphabet at least once, ignoring "
     "case"), """
def is_pangram(s):
    return set('abcdefghijklmnopqrstuvwxyz') <= set(s.lower())
""", ["'The quick brown fox jumps over the lazy dog'", "'hello world'", "''", "'ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]),
    ("caesar_shift(s, k)", ("shifts every letter of `s` forward by `k` places in the alphabet, wrapping around from "
     "z to a and keeping its case; other characters are unchanged"), """
def caesar_shift(s, k):
    out = []
    for c in s:
        if c.islower():
            out.append(chr((ord(c) - 97 + k) % 26 + 97))
        elif c.isupper():
            out.append(chr((ord(c) - 65 + k) % 26 + 65))
        else:
            out.append(c)
    return ''.join(out)
""", ["'abc', 1", "'xyz', 3", "'Hello, World!', 13", "'abc', 26"]),
    ("remove_duplicate_chars(s)", "returns `s` with only the first occurrence of each character kept", """
def remove_duplicate_chars(s):
    seen, out = set(), []
    for c in s:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return ''.join(out)
""", ["'banana'", "'abc'", "''", "'aabbccabc'"]),
    ("count_uppercase(s)", "returns the number of upper-case letters in `s`", """
def count_uppercase(s):
    return sum(c.isupper() for c in s)
""", ["'Hello World'", "'abc'", "'ABC'", "''"]),
    ("swap_case(s)", "returns `s` with upper-case letters made lower case and lower-case letters made upper case", """
def swap_case(s):
    return ''.join(c.lower() if c.isupper() else c.upper() for c in s)
""", ["'Hello'", "'aBc 123'", "''", "'PYTHON'"]),
    ("is_digit_string(s)", "returns True when `s` is non-empty and every character is one of 0-9, else False", """
def is_digit_string(s):
    return len(s) > 0 and all(c in '0123456789' for c in s)
""", ["'12345'", "''", "'12a'", "'0'", "'-1'"]),
    ("pad_left(s, width, ch)", ("returns `s` padded on the left with the character `ch` to `width` characters (`s` "
     "unchanged when it is already at least that long)"), """
def pad_left(s, width, ch):
    return ch * max(0, width - len(s)) + s
""", ["'7', 3, '0'", "'abc', 2, '*'", "'', 4, '-'", "'ab', 5, ' '"]),
    ("truncate(s, n)", ("returns `s` unchanged when it has at most `n` characters, and otherwise its first `n` - 3 "
     "characters followed by '...' (`n` is at least 3)"), """
def truncate(s, n):
    return s if len(s) <= n else s[:n - 3] + '...'
""", ["'hello world', 8", "'short', 10", "'abcdef', 6", "'abcdefg', 6"]),
    ("initials(name)", ("returns the initials of the space-separated words of `name`, each upper-cased and followed "
     "by a dot (for example 'ada lovelace' gives 'A.L.')"), """
def initials(name):
    return ''.join(w[0].upper() + '.' for w in name.split())
""", ["'ada lovelace'", "'John Ronald Reuel Tolkien'", "'x'", "''"]),
    ("mask_card(s)", "returns `s` with every character except the last four replaced by '#'", """
def mask_card(s):
    return '#' * max(0, len(s) - 4) + s[-4:]
""", ["'4556364607935616'", "'1234'", "'12'", "'abcdefg'"]),
    ("is_balanced(s)", ("returns True when the brackets (), [] and {} in `s` are balanced and properly nested, "
     "ignoring every other character"), """
def is_balanced(s):
    pairs, stack = {')': '(', ']': '[', '}': '{'}, []
    for c in s:
        if c in '([{':
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                return False
    return not stack
""", ["'([]{})'", "'([)]'", "''", "'((a)'", "'f(x[1]) {y}'"]),
    ("longest_common_prefix(words)", ("returns the longest string that every string in the list `words` starts "
     "with ('' for an empty list)"), """
def longest_common_prefix(words):
    if not words:
        return ''
    prefix = words[0]
    for w in words[1:]:
        while not w.startswith(prefix):
            prefix = prefix[:-1]
    return prefix
""", ["['flower', 'flow', 'flight']", "['dog', 'racecar', 'car']", "[]", "['same', 'same']", "['a']"]),
    ("word_lengths(s)", "returns the list of the lengths of the whitespace-separated words of `s`, in order", """
def word_lengths(s):
    return [len(w) for w in s.split()]
""", ["'the quick brown fox'", "''", "'a bb ccc'", "'hello'"]),
    ("acronym(s)", ("returns the upper-cased first letters of the whitespace-separated words of `s`, joined "
     "together"), """
def acronym(s):
    return ''.join(w[0].upper() for w in s.split())
""", ["'portable network graphics'", "'As Soon As Possible'", "''", "'x'"]),
    ("replace_vowels(s, ch)", "returns `s` with every vowel (a, e, i, o, u, in either case) replaced by `ch`", """
def replace_vowels(s, ch):
    return ''.join(ch if c in 'aeiouAEIOU' else c for c in s)
""", ["'hello world', '*'", "'AEIOU', '-'", "'rhythm', '_'", "'', 'x'"]),
    ("count_char(s, c)", "returns how many times the character `c` occurs in `s`", """
def count_char(s, c):
    return s.count(c)
""", ["'banana', 'a'", "'banana', 'z'", "'', 'a'", "'AaA', 'A'"]),
    ("strip_punctuation(s)", ("returns `s` with every ASCII punctuation character (those in "
     "`string.punctuation`) removed"), """
import string

def strip_punctuation(s):
    return ''.join(c for c in s if c not in string.punctuation)
""", ["'Hello, world!'", "'no punctuation'", "''", "'a.b,c;d:e?'"]),
    ("is_isogram(s)", "returns True when no letter occurs more than once in `s`, ignoring case and non-letters", """
def is_isogram(s):
    letters = [c.lower() for c in s if c.isalpha()]
    return len(letters) == len(set(letters))
""", ["'lumberjacks'", "'Alphabet'", "''", "'six-year-old'", "'isograms'"]),
    ("alternate_case(s)", ("returns `s` with characters at even indexes upper-cased and at odd indexes "
     "lower-cased"), """
def alternate_case(s):
    return ''.join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(s))
""", ["'hello'", "'PYTHON'", "''", "'a b'"]),
    ("sort_letters(s)", "returns the characters of `s` sorted in ascending order, as a string", """
def sort_letters(s):
    return ''.join(sorted(s))
""", ["'hello'", "'dcba'", "''", "'bBaA'"]),
    ("unique_words(s)", "returns the sorted list of the distinct whitespace-separated words of `s`, lower-cased", """
def unique_words(s):
    return sorted(set(s.lower().split()))
""", ["'the cat and The dog'", "''", "'b a b a'", "'Hello'"]),
    ("repeat_chars(s, n)", ("returns `s` with every character repeated `n` times in place (for example 'ab' and 2 "
     "give 'aabb')"), """
def repeat_chars(s, n):
    return ''.join(c * n for c in s)
""", ["'ab', 2", "'xyz', 3", "'', 5", "'a', 0"]),
    ("interleave_strings(a, b)", ("returns the characters of `a` and `b` taken alternately, starting with `a`, with "
     "what is left of the longer one appended"), """
def interleave_strings(a, b):
    out = [x + y for x, y in zip(a, b)]
    n = min(len(a), len(b))
    return ''.join(out) + a[n:] + b[n:]
""", ["'abc', '123'", "'ab', 'wxyz'", "'', 'q'", "'hello', ''"]),
    ("hamming_distance(a, b)", ("returns the number of positions at which the equal-length strings `a` and `b` "
     "differ"), """
def hamming_distance(a, b):
    return sum(x != y for x, y in zip(a, b))
""", ["'karolin', 'kathrin'", "'abc', 'abc'", "'', ''", "'1011101', '1001001'"]),
    ("count_digits(s)", "returns the number of characters of `s` that are digits 0-9", """
def count_digits(s):
    return sum(c in '0123456789' for c in s)
""", ["'abc123'", "'no digits'", "''", "'2024-01-31'"]),
    ("sum_digit_chars(s)", "returns the sum of the digits 0-9 that appear as characters in `s`", """
def sum_digit_chars(s):
    return sum(int(c) for c in s if c in '0123456789')
""", ["'a1b2c3'", "'none'", "''", "'999'"]),
    ("extract_numbers(s)", ("returns the list of integers formed by the maximal runs of digits 0-9 in `s`, in "
     "order"), """
def extract_numbers(s):
    out, cur = [], ''
    for c in s + ' ':
        if c in '0123456789':
            cur += c
        elif cur:
            out.append(int(cur))
            cur = ''
    return out
""", ["'abc 12 de 345f6'", "'no numbers'", "''", "'007 and 42'"]),
    ("rotate_string(s, k)", ("returns `s` rotated left by `k` characters (`k` may exceed the length; an empty string "
     "stays empty)"), """
def rotate_string(s, k):
    if not s:
        return s
    k %= len(s)
    return s[k:] + s[:k]
""", ["'abcdef', 2", "'abc', 3", "'abc', 4", "'', 3"]),
    ("is_rotation(a, b)", ("returns True when `b` can be obtained by rotating the string `a` (both the same length), "
     "else False"), """
def is_rotation(a, b):
    return len(a) == len(b) and b in a + a
""", ["'waterbottle', 'erbottlewat'", "'abc', 'acb'", "'', ''", "'aa', 'aaa'"]),
    ("longest_run(s)", ("returns the length of the longest run of one character repeated consecutively in `s` (0 for "
     "an empty string)"), """
def longest_run(s):
    best = cur = 0
    for i, c in enumerate(s):
        cur = cur + 1 if i and s[i - 1] == c else 1
        best = max(best, cur)
    return best
""", ["'aabbbcc'", "'abc'", "''", "'zzzzaz'"]),
    ("count_lines(text)", ("returns the number of lines in `text`, where lines are separated by '\\n' and an empty "
     "string has 0 lines"), """
def count_lines(text):
    return 0 if text == '' else text.count('\\n') + 1
""", ["'one'", "'a\\nb\\nc'", "''", "'a\\n\\nb'"]),
    ("reverse_each_word(s)", "returns `s` with each space-separated word reversed, keeping the words in order", """
def reverse_each_word(s):
    return ' '.join(w[::-1] for w in s.split(' '))
""", ["'hello world'", "'abc'", "''", "'ab cd ef'"]),
    ("middle_chars(s)", ("returns the middle character of `s` when its length is odd, and the middle two characters "
     "when it is even"), """
def middle_chars(s):
    n = len(s)
    return s[(n - 1) // 2:n // 2 + 1]
""", ["'abc'", "'abcd'", "'a'", "'testing'"]),
    ("is_subsequence(a, b)", ("returns True when the characters of `a` appear in `b` in the same order (not "
     "necessarily next to each other)"), """
def is_subsequence(a, b):
    it = iter(b)
    return all(c in it for c in a)
""", ["'ace', 'abcde'", "'aec', 'abcde'", "'', 'abc'", "'abc', ''"]),
    ("char_indices(s, c)", "returns the list of the indexes at which the character `c` occurs in `s`", """
def char_indices(s, c):
    return [i for i, x in enumerate(s) if x == c]
""", ["'banana', 'a'", "'banana', 'z'", "'', 'a'", "'aaa', 'a'"]),
    ("squeeze_spaces(s)", ("returns `s` with leading and trailing spaces removed and every run of spaces inside "
     "replaced by a single space"), """
def squeeze_spaces(s):
    return ' '.join(w for w in s.split(' ') if w)
""", ["'  hello   world  '", "'a b'", "''", "'   '"]),
    ("count_consonants(s)", ("returns the number of English letters in `s` that are not vowels (a, e, i, o, u), in "
     "either case"), """
def count_consonants(s):
    return sum(c.isascii() and c.isalpha() and c.lower() not in 'aeiou' for c in s)
""", ["'hello'", "'AEIOU'", "'rhythm'", "''", "'Hi, Bob!'"]),
    ("word_frequencies(s)", ("returns a dict mapping each lower-cased whitespace-separated word of `s` to its number "
     "of occurrences"), """
def word_frequencies(s):
    out = {}
    for w in s.lower().split():
        out[w] = out.get(w, 0) + 1
    return out
""", ["'the cat the Dog'", "''", "'a a a'", "'One two'"]),
    ("to_kebab_case(s)", "returns the whitespace-separated words of `s` lower-cased and joined by '-'", """
def to_kebab_case(s):
    return '-'.join(w.lower() for w in s.split())
""", ["'Hello World Foo'", "'single'", "''", "'  Many   Spaces '"]),
    ("has_double_letter(s)", ("returns True when some character of `s` is immediately followed by the same "
     "character"), """
def has_double_letter(s):
    return any(a == b for a, b in zip(s, s[1:]))
""", ["'hello'", "'abc'", "''", "'aa'"]),
    ("parse_int_list(s)", ("parses a comma-separated string of integers such as '1,2,3' into a list of ints (an "
     "empty string gives an empty list; spaces around numbers are allowed)"), """
def parse_int_list(s):
    return [int(x) for x in s.split(',')] if s.strip() else []
""", ["'1,2,3'", "''", "' 4 , -5 ,6'", "'42'"]),
    ("shortest_word(s)", ("returns the shortest whitespace-separated word of `s` (the first one on a tie), or '' when "
     "there are no words"), """
def shortest_word(s):
    words = s.split()
    return min(words, key=len) if words else ''
""", ["'the quick brown fox'", "'aa b cc d'", "''", "'hello'"]),
    ("ends_with_vowel(s)", ("returns True when the last character of `s` is a vowel (a, e, i, o, u, in either case), "
     "and False otherwise (also for an empty string)"), """
def ends_with_vowel(s):
    return s[-1:].lower() in ('a', 'e', 'i', 'o', 'u')
""", ["'banana'", "'sky'", "''", "'ECHO'"]),
    ("count_words_starting_with(s, letter)", ("returns how many whitespace-separated words of `s` start with "
     "`letter`, ignoring case"), """
def count_words_starting_with(s, letter):
    return sum(w[0].lower() == letter.lower() for w in s.split())
""", ["'Apples and avocados are amazing', 'a'", "'hello world', 'z'", "'', 'a'", "'Big blue Bird', 'B'"]),
    ("censor_word(s, word)", ("returns `s` with every occurrence of the space-separated word `word` replaced by as "
     "many '*' characters as it has letters"), """
def censor_word(s, word):
    return ' '.join('*' * len(w) if w == word else w for w in s.split(' '))
""", ["'this is bad very bad', 'bad'", "'nothing here', 'bad'", "'', 'x'", "'badly bad', 'bad'"]),
    # --- lists and dicts ---
    ("sum_of_evens(nums)", "returns the sum of the even numbers in the list `nums`", """
def sum_of_evens(nums):
    return sum(n for n in nums if n % 2 == 0)
""", ["[1, 2, 3, 4]", "[]", "[1, 3, 5]", "[-2, 2, 10]"]),
    ("second_largest(nums)", ("returns the second largest distinct value in the list `nums`, or None when there are "
     "fewer than two distinct values"), """
def second_largest(nums):
    values = sorted(set(nums))
    return values[-2] if len(values) >= 2 else None
""", ["[3, 1, 4, 1, 5]", "[7, 7, 7]", "[]", "[2, 1]", "[-1, -5, -3]"]),
    ("remove_duplicates(items)", ("returns the list `items` with duplicates removed, keeping the first occurrence of "
     "each value in order"), """
def remove_duplicates(items):
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
""", ["[1, 2, 1, 3, 2]", "[]", "['a', 'b', 'a']", "[5, 5, 5]"]),
    ("flatten(nested)", "flattens a list of lists `nested` by one level into a single list", """
def flatten(nested):
    return [x for sub in nested for x in sub]
""", ["[[1, 2], [3], []]", "[]", "[[1, [2]], [3]]", "[['a'], ['b', 'c']]"]),
    ("deep_flatten(nested)", ("flattens the arbitrarily nested list `nested` into a flat list of its non-list "
     "elements, in order"), """
def deep_flatten(nested):
    out = []
    for x in nested:
        out.extend(deep_flatten(x) if isinstance(x, list) else [x])
    return out
""", ["[1, [2, [3, [4]]], 5]", "[]", "[[[]]]", "[['a', ['b']], 'c']"]),
    ("chunk(items, n)", "splits the list `items` into consecutive lists of `n` elements (the last may be shorter)", """
def chunk(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]
""", ["[1, 2, 3, 4, 5], 2", "[], 3", "[1, 2, 3], 3", "[1, 2, 3], 5"]),
    ("rotate_list(items, k)", ("returns the list `items` rotated right by `k` positions (`k` may exceed the length; "
     "an empty list stays empty)"), """
def rotate_list(items, k):
    if not items:
        return []
    k %= len(items)
    return items[-k:] + items[:-k] if k else list(items)
""", ["[1, 2, 3, 4, 5], 2", "[1, 2, 3], 0", "[1, 2, 3], 4", "[], 2"]),
    ("running_sum(nums)", ("returns the list of running totals of `nums` (element i is the sum of the first i + 1 "
     "numbers)"), """
def running_sum(nums):
    out, total = [], 0
    for n in nums:
        total += n
        out.append(total)
    return out
""", ["[1, 2, 3, 4]", "[]", "[5]", "[3, -3, 3]"]),
    ("has_pair_with_sum(nums, target)", ("returns True when two elements at different positions of `nums` add up to "
     "`target`"), """
def has_pair_with_sum(nums, target):
    seen = set()
    for n in nums:
        if target - n in seen:
            return True
        seen.add(n)
    return False
""", ["[1, 4, 6, 3], 7", "[1, 2, 3], 7", "[], 0", "[5, 5], 10", "[5], 10"]),
    ("two_sum(nums, target)", ("returns a tuple (i, j) with i < j of the first pair of indexes (smallest j, then "
     "smallest i) whose elements add up to `target`, or None when there is none"), """
def two_sum(nums, target):
    for j in range(len(nums)):
        for i in range(j):
            if nums[i] + nums[j] == target:
                return (i, j)
    return None
""", ["[2, 7, 11, 15], 9", "[3, 2, 4], 6", "[1, 2], 5", "[3, 3], 6"]),
    ("count_occurrences(items, x)", "returns how many elements of the list `items` are equal to `x`", """
def count_occurrences(items, x):
    return sum(1 for y in items if y == x)
""", ["[1, 2, 1, 1], 1", "[], 3", "['a', 'b'], 'c'", "[0, 0], 0"]),
    ("most_frequent(items)", ("returns the most frequent element of the non-empty list `items`; on a tie, the one "
     "that appears first"), """
def most_frequent(items):
    return max(items, key=lambda x: (items.count(x), -items.index(x)))
""", ["[1, 2, 2, 3]", "[4, 5, 5, 4]", "['x']", "[3, 1, 3, 1, 1]"]),
    ("merge_sorted(a, b)", "merges the two ascending lists `a` and `b` into one ascending list", """
def merge_sorted(a, b):
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]
""", ["[1, 3, 5], [2, 4, 6]", "[], [1, 2]", "[1, 1], [1]", "[5], []"]),
    ("is_sorted(items)", "returns True when the list `items` is in non-decreasing order", """
def is_sorted(items):
    return all(a <= b for a, b in zip(items, items[1:]))
""", ["[1, 2, 2, 3]", "[3, 1]", "[]", "[7]"]),
    ("common_elements(a, b)", ("returns the ascending list of the distinct values that appear in both lists `a` and "
     "`b`"), """
def common_elements(a, b):
    return sorted(set(a) & set(b))
""", ["[1, 2, 3, 2], [2, 3, 4]", "[], [1]", "[5, 1], [1, 5]", "[1, 2], [3, 4]"]),
    ("sorted_union(a, b)", "returns the ascending list of the distinct values that appear in `a` or in `b`", """
def sorted_union(a, b):
    return sorted(set(a) | set(b))
""", ["[3, 1], [2, 3]", "[], []", "[1, 1], [1]", "[5], [-5]"]),
    ("list_difference(a, b)", ("returns the elements of `a` that do not appear in `b`, keeping their order and "
     "repeats"), """
def list_difference(a, b):
    return [x for x in a if x not in b]
""", ["[1, 2, 3, 2, 4], [2]", "[], [1]", "[1, 2], []", "[1, 1], [1]"]),
    ("zip_to_dict(keys, values)", ("returns a dict mapping each element of `keys` to the element of `values` at the "
     "same position (the lists have the same length)"), """
def zip_to_dict(keys, values):
    return dict(zip(keys, values))
""", ["['a', 'b'], [1, 2]", "[], []", "[1], ['one']", "['x', 'y', 'z'], [0, 0, 0]"]),
    ("invert_dict(d)", "returns a dict mapping each value of the dict `d` to its key (the values are distinct)", """
def invert_dict(d):
    return {v: k for k, v in d.items()}
""", ["{'a': 1, 'b': 2}", "{}", "{1: 'one'}"]),
    ("group_by_length(words)", ("returns a dict mapping each word length to the list of the words of `words` with "
     "that length, in their original order"), """
def group_by_length(words):
    out = {}
    for w in words:
        out.setdefault(len(w), []).append(w)
    return out
""", ["['a', 'bb', 'c', 'dd', 'eee']", "[]", "['same', 'size']"]),
    ("split_even_odd(nums)", ("returns a tuple of two lists: the even numbers of `nums` and the odd ones, each in "
     "order"), """
def split_even_odd(nums):
    return ([n for n in nums if n % 2 == 0], [n for n in nums if n % 2])
""", ["[1, 2, 3, 4, 5]", "[]", "[2, 4]", "[-1, -2]"]),
    ("max_window_sum(nums, k)", ("returns the largest sum of `k` consecutive elements of `nums` (1 <= k <= "
     "len(nums))"), """
def max_window_sum(nums, k):
    return max(sum(nums[i:i + k]) for i in range(len(nums) - k + 1))
""", ["[1, 2, 3, 4, 5], 2", "[5, -1, 5], 1", "[-3, -2, -1], 2", "[4, 4], 2"]),
    ("product_of_list(nums)", "returns the product of the numbers in `nums` (1 for an empty list)", """
def product_of_list(nums):
    out = 1
    for n in nums:
        out *= n
    return out
""", ["[1, 2, 3, 4]", "[]", "[5, 0, 3]", "[-2, 3]"]),
    ("count_positives(nums)", "returns how many numbers in `nums` are greater than zero", """
def count_positives(nums):
    return sum(n > 0 for n in nums)
""", ["[1, -2, 3, 0]", "[]", "[-1, -2]", "[7, 8, 9]"]),
    ("min_max(nums)", "returns a tuple (smallest, largest) of the non-empty list `nums`", """
def min_max(nums):
    return (min(nums), max(nums))
""", ["[3, 1, 4, 1, 5]", "[7]", "[-2, -8, 0]"]),
    ("value_range(nums)", ("returns the difference between the largest and the smallest number of the non-empty list "
     "`nums`"), """
def value_range(nums):
    return max(nums) - min(nums)
""", ["[3, 1, 4, 1, 5]", "[7]", "[-2, -8, 0]"]),
    ("add_lists(a, b)", "returns the element-wise sums of the equal-length lists `a` and `b`", """
def add_lists(a, b):
    return [x + y for x, y in zip(a, b)]
""", ["[1, 2, 3], [4, 5, 6]", "[], []", "[-1], [1]"]),
    ("transpose(matrix)", "returns the transpose of the rectangular matrix `matrix` (a list of rows)", """
def transpose(matrix):
    return [list(col) for col in zip(*matrix)]
""", ["[[1, 2, 3], [4, 5, 6]]", "[[1]]", "[]", "[[1, 2]]"]),
    ("diagonal_sum(matrix)", "returns the sum of the main diagonal of the square matrix `matrix`", """
def diagonal_sum(matrix):
    return sum(matrix[i][i] for i in range(len(matrix)))
""", ["[[1, 2], [3, 4]]", "[[5]]", "[]", "[[1, 0, 0], [0, 2, 0], [0, 0, 3]]"]),
    ("find_index(items, x)", ("returns the index of the first element of `items` equal to `x`, or -1 when there is "
     "none"), """
def find_index(items, x):
    for i, y in enumerate(items):
        if y == x:
            return i
    return -1
""", ["[5, 3, 5], 5", "[1, 2], 3", "[], 1", "['a', 'b'], 'b'"]),
    ("last_index(items, x)", ("returns the index of the last element of `items` equal to `x`, or -1 when there is "
     "none"), """
def last_index(items, x):
    for i in range(len(items) - 1, -1, -1):
        if items[i] == x:
            return i
    return -1
""", ["[5, 3, 5], 5", "[1, 2], 3", "[], 1", "['a', 'b'], 'a'"]),
    ("interleave_lists(a, b)", ("returns the elements of `a` and `b` taken alternately, starting with `a`, with what "
     "is left of the longer list appended"), """
def interleave_lists(a, b):
    out = [x for pair in zip(a, b) for x in pair]
    n = min(len(a), len(b))
    return out + a[n:] + b[n:]
""", ["[1, 2, 3], ['a', 'b', 'c']", "[1], [2, 3, 4]", "[], [5]", "[1, 2], []"]),
    ("cumulative_product(nums)", ("returns the list whose element i is the product of the first i + 1 numbers of "
     "`nums`"), """
def cumulative_product(nums):
    out, p = [], 1
    for n in nums:
        p *= n
        out.append(p)
    return out
""", ["[1, 2, 3, 4]", "[]", "[2, 0, 5]", "[-1, -1, -1]"]),
    ("count_unique(items)", "returns the number of distinct values in the list `items`", """
def count_unique(items):
    return len(set(items))
""", ["[1, 2, 2, 3]", "[]", "['a', 'a']", "[1, 1, 1, 2]"]),
    ("long_words(words, n)", ("returns the words of the list `words` that are longer than `n` characters, in "
     "order"), """
def long_words(words, n):
    return [w for w in words if len(w) > n]
""", ["['a', 'abc', 'abcd'], 2", "[], 1", "['hi', 'yo'], 5", "['x', 'yy'], 0"]),
    ("sort_by_length(words)", ("returns the list `words` sorted by word length, keeping the original order of words "
     "of equal length"), """
def sort_by_length(words):
    return sorted(words, key=len)
""", ["['ccc', 'a', 'bb', 'd']", "[]", "['same', 'four', 'xy']"]),
    ("sort_by_second(pairs)", ("returns the list of 2-tuples `pairs` sorted by their second element, keeping the "
     "original order of ties"), """
def sort_by_second(pairs):
    return sorted(pairs, key=lambda p: p[1])
""", ["[(1, 3), (2, 1), (3, 2)]", "[]", "[('a', 1), ('b', 1), ('c', 0)]"]),
    ("top_k(nums, k)", "returns the `k` largest numbers of `nums` in descending order", """
def top_k(nums, k):
    return sorted(nums, reverse=True)[:k]
""", ["[3, 1, 4, 1, 5, 9], 3", "[1, 2], 0", "[5, 5, 1], 2", "[2], 1"]),
    ("median(nums)", ("returns the median of the non-empty list of numbers `nums` (the mean of the two middle values "
     "when the length is even)"), """
def median(nums):
    s = sorted(nums)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
""", ["[3, 1, 2]", "[4, 1, 3, 2]", "[7]", "[1, 1, 2, 5]"]),
    ("missing_number(nums)", ("returns the one number missing from `nums`, which holds every integer from 0 to "
     "len(nums) except one"), """
def missing_number(nums):
    n = len(nums)
    return n * (n + 1) // 2 - sum(nums)
""", ["[3, 0, 1]", "[0]", "[1]", "[9, 6, 4, 2, 3, 5, 7, 0, 1]"]),
    ("find_duplicates(items)", ("returns the ascending list of the distinct values that occur more than once in "
     "`items`"), """
def find_duplicates(items):
    return sorted({x for x in items if items.count(x) > 1})
""", ["[1, 2, 3, 2, 1]", "[]", "[1, 2, 3]", "[4, 4, 4]"]),
    ("longest_increasing_run(nums)", ("returns the length of the longest run of consecutive elements of `nums` that "
     "strictly increase (0 for an empty list)"), """
def longest_increasing_run(nums):
    best = cur = 0
    for i, n in enumerate(nums):
        cur = cur + 1 if i and nums[i - 1] < n else 1
        best = max(best, cur)
    return best
""", ["[1, 2, 3, 1, 2]", "[]", "[5, 4, 3]", "[1, 2, 2, 3, 4, 5]"]),
    ("majority_element(nums)", ("returns the value that occurs more than len(nums) / 2 times in `nums`, or None when "
     "there is none"), """
def majority_element(nums):
    for x in nums:
        if nums.count(x) * 2 > len(nums):
            return x
    return None
""", ["[3, 2, 3]", "[1, 2, 3]", "[]", "[2, 2, 1, 1, 2]", "[1, 1, 2, 2]"]),
    ("move_zeros(nums)", "returns a new list with the elements of `nums` in order but every 0 moved to the end", """
def move_zeros(nums):
    return [n for n in nums if n != 0] + [0] * nums.count(0)
""", ["[0, 1, 0, 3, 12]", "[]", "[0, 0]", "[1, 2]"]),
    ("count_pairs_with_sum(nums, target)", ("returns the number of index pairs i < j with nums[i] + nums[j] == "
     "`target`"), """
def count_pairs_with_sum(nums, target):
    return sum(nums[i] + nums[j] == target for j in range(len(nums)) for i in range(j))
""", ["[1, 2, 3, 4, 3], 6", "[], 1", "[1, 1, 1], 2", "[5], 10"]),
    ("alternating_sum(nums)", "returns nums[0] - nums[1] + nums[2] - nums[3] + ... (0 for an empty list)", """
def alternating_sum(nums):
    return sum(n if i % 2 == 0 else -n for i, n in enumerate(nums))
""", ["[1, 2, 3, 4]", "[]", "[5]", "[10, 20, 30]"]),
    ("every_nth(items, n)", "returns the elements of `items` at indexes 0, n, 2n, ...", """
def every_nth(items, n):
    return items[::n]
""", ["[1, 2, 3, 4, 5, 6, 7], 3", "[], 2", "['a', 'b'], 1", "[1, 2, 3], 5"]),
    ("replace_value(items, old, new)", ("returns a copy of `items` with every element equal to `old` replaced by "
     "`new`"), """
def replace_value(items, old, new):
    return [new if x == old else x for x in items]
""", ["[1, 2, 1, 3], 1, 9", "[], 1, 2", "['a', 'b'], 'c', 'd'"]),
    ("sum_of_squares(nums)", "returns the sum of the squares of the numbers in `nums`", """
def sum_of_squares(nums):
    return sum(n * n for n in nums)
""", ["[1, 2, 3]", "[]", "[-4]", "[0, 10]"]),
    ("is_monotonic(nums)", "returns True when `nums` is entirely non-increasing or entirely non-decreasing", """
def is_monotonic(nums):
    pairs = list(zip(nums, nums[1:]))
    return all(a <= b for a, b in pairs) or all(a >= b for a, b in pairs)
""", ["[1, 2, 2, 3]", "[6, 5, 4, 4]", "[1, 3, 2]", "[]", "[5]"]),
    ("max_profit(prices)", ("returns the largest profit from buying at one day's price in `prices` and selling at a "
     "later day's price, or 0 when no profit is possible"), """
def max_profit(prices):
    best, low = 0, None
    for p in prices:
        if low is not None:
            best = max(best, p - low)
        low = p if low is None else min(low, p)
    return best
""", ["[7, 1, 5, 3, 6, 4]", "[7, 6, 4, 3, 1]", "[]", "[2, 4, 1, 7]"]),
    ("count_inversions(nums)", "returns the number of index pairs i < j with nums[i] > nums[j]", """
def count_inversions(nums):
    return sum(nums[i] > nums[j] for j in range(len(nums)) for i in range(j))
""", ["[2, 4, 1, 3, 5]", "[]", "[1, 2, 3]", "[3, 2, 1]"]),
    ("sum_dict_values(d)", "returns the sum of the values of the dict `d`", """
def sum_dict_values(d):
    return sum(d.values())
""", ["{'a': 1, 'b': 2}", "{}", "{'x': -5, 'y': 5, 'z': 10}"]),
    ("key_with_max_value(d)", ("returns the key of the non-empty dict `d` with the largest value (the first such key "
     "in insertion order on a tie)"), """
def key_with_max_value(d):
    return max(d, key=lambda k: d[k])
""", ["{'a': 1, 'b': 3, 'c': 2}", "{'x': 5}", "{'p': 2, 'q': 2}"]),
    ("merge_counts(a, b)", ("returns a new dict with the keys of the dicts `a` and `b`, where the values of keys in "
     "both are added"), """
def merge_counts(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out
""", ["{'a': 1, 'b': 2}, {'b': 3, 'c': 4}", "{}, {}", "{'x': 1}, {}", "{}, {'y': 2}"]),
    ("nested_sum(nested)", "returns the sum of all the numbers in the arbitrarily nested list `nested`", """
def nested_sum(nested):
    return sum(nested_sum(x) if isinstance(x, list) else x for x in nested)
""", ["[1, [2, 3], [[4]]]", "[]", "[[[]]]", "[-1, [1, [5]]]"]),
    ("list_depth(nested)", ("returns the nesting depth of the list `nested`: 1 for a list with no lists inside, plus "
     "one for each further level"), """
def list_depth(nested):
    return 1 + max((list_depth(x) for x in nested if isinstance(x, list)), default=0)
""", ["[1, 2]", "[]", "[1, [2, [3]]]", "[[], [[]]]"]),
    ("differences(nums)", ("returns the list of differences between consecutive elements of `nums` (element i is "
     "nums[i + 1] - nums[i])"), """
def differences(nums):
    return [b - a for a, b in zip(nums, nums[1:])]
""", ["[1, 4, 9, 16]", "[]", "[5]", "[3, 1, 2]"]),
    ("spiral_order(matrix)", ("returns the elements of the rectangular matrix `matrix` in clockwise spiral order, "
     "starting at the top left"), """
def spiral_order(matrix):
    out, m = [], [list(r) for r in matrix]
    while m:
        out += m.pop(0)
        m = [list(r) for r in zip(*m)][::-1]
    return out
""", ["[[1, 2, 3], [4, 5, 6], [7, 8, 9]]", "[[1, 2], [3, 4], [5, 6]]", "[]", "[[7]]"]),
    ("rotate_matrix(matrix)", "returns the square matrix `matrix` rotated 90 degrees clockwise", """
def rotate_matrix(matrix):
    return [list(r) for r in zip(*matrix[::-1])]
""", ["[[1, 2], [3, 4]]", "[[1, 2, 3], [4, 5, 6], [7, 8, 9]]", "[[5]]"]),
    ("binary_search(nums, x)", ("returns the index of `x` in the ascending list of distinct numbers `nums`, or -1 "
     "when it is not there"), """
def binary_search(nums, x):
    lo, hi = 0, len(nums) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if nums[mid] == x:
            return mid
        if nums[mid] < x:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
""", ["[1, 3, 5, 7, 9], 7", "[1, 3, 5], 4", "[], 1", "[2], 2", "[1, 2, 3, 4], 1"]),
    ("pairwise_max(a, b)", ("returns the list of the larger of a[i] and b[i] for each position of the equal-length "
     "lists `a` and `b`"), """
def pairwise_max(a, b):
    return [max(x, y) for x, y in zip(a, b)]
""", ["[1, 5, 3], [4, 2, 6]", "[], []", "[-1], [-2]"]),
    ("index_of_max(nums)", ("returns the index of the largest number in the non-empty list `nums` (the first one on a "
     "tie)"), """
def index_of_max(nums):
    return nums.index(max(nums))
""", ["[1, 9, 3, 9]", "[5]", "[-3, -1, -2]"]),
    ("filter_by_type(items, kind)", ("returns the elements of `items` whose type is exactly `kind` (for example "
     "`int`), in order"), """
def filter_by_type(items, kind):
    return [x for x in items if type(x) is kind]
""", ["[1, 'a', 2.5, 3], int", "[1, 'a', 'b'], str", "[], int", "[True, 1], bool"]),
    ("frequency_sort(items)", ("returns the distinct values of `items` ordered by how often they occur, most frequent "
     "first, ties in order of first appearance"), """
def frequency_sort(items):
    distinct = list(dict.fromkeys(items))
    return sorted(distinct, key=lambda x: -items.count(x))
""", ["[1, 2, 2, 3, 3, 3]", "[]", "['b', 'a', 'a', 'b', 'c']", "[4, 5]"]),
    # --- arithmetic ---
    ("factorial(n)", "returns n! for a non-negative integer `n` (0! is 1)", """
def factorial(n):
    out = 1
    for i in range(2, n + 1):
        out *= i
    return out
""", ["0", "1", "5", "10"]),
    ("fibonacci(n)", "returns the `n`-th Fibonacci number, where fibonacci(0) is 0 and fibonacci(1) is 1", """
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
""", ["0", "1", "2", "10", "30"]),
    ("is_prime(n)", ("returns True when the integer `n` is a prime number, and False otherwise (also for numbers "
     "below 2)"), """
def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
""", ["2", "1", "21", "-7", "97"]),
    ("gcd(a, b)", "returns the greatest common divisor of the non-negative integers `a` and `b`, not both zero", """
def gcd(a, b):
    while b:
        a, b = b, a % b
    return a
""", ["12, 18", "7, 13", "0, 5", "100, 75"]),
    ("lcm(a, b)", "returns the least common multiple of the positive integers `a` and `b`", """
def lcm(a, b):
    x, y = a, b
    while y:
        x, y = y, x % y
    return a * b // x
""", ["4, 6", "7, 3", "5, 5", "12, 18"]),
    ("sum_digits(n)", "returns the sum of the decimal digits of the integer `n` (ignoring its sign)", """
def sum_digits(n):
    return sum(int(c) for c in str(abs(n)))
""", ["123", "0", "-45", "9999"]),
    ("reverse_number(n)", ("returns the integer whose decimal digits are those of `n` in reverse order, keeping the "
     "sign of `n` (for example -120 gives -21)"), """
def reverse_number(n):
    r = int(str(abs(n))[::-1])
    return -r if n < 0 else r
""", ["123", "-120", "0", "5"]),
    ("is_perfect_square(n)", "returns True when the integer `n` is the square of an integer, else False", """
def is_perfect_square(n):
    if n < 0:
        return False
    r = int(n ** 0.5)
    while r * r > n:
        r -= 1
    while (r + 1) * (r + 1) <= n:
        r += 1
    return r * r == n
""", ["16", "15", "0", "-4", "1000000"]),
    ("count_divisors(n)", "returns the number of positive divisors of the positive integer `n`", """
def count_divisors(n):
    return sum(n % d == 0 for d in range(1, n + 1))
""", ["1", "6", "12", "13"]),
    ("prime_factors(n)", ("returns the prime factors of the integer `n` >= 2 in ascending order, repeated by "
     "multiplicity (for example 12 gives [2, 2, 3])"), """
def prime_factors(n):
    out, d = [], 2
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1
    if n > 1:
        out.append(n)
    return out
""", ["12", "13", "100", "2", "97 * 89"]),
    ("digital_root(n)", ("returns the digital root of the non-negative integer `n`: its digits summed repeatedly "
     "until one digit is left"), """
def digital_root(n):
    while n >= 10:
        n = sum(int(c) for c in str(n))
    return n
""", ["16", "942", "0", "132189"]),
    ("is_armstrong(n)", ("returns True when the non-negative integer `n` equals the sum of its digits each raised to "
     "the power of the number of digits (for example 153)"), """
def is_armstrong(n):
    digits = str(n)
    return n == sum(int(c) ** len(digits) for c in digits)
""", ["153", "370", "10", "0", "9474"]),
    ("collatz_steps(n)", ("returns how many steps of the Collatz rule (halve an even number, turn an odd one into 3n "
     "+ 1) take the positive integer `n` to 1"), """
def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps
""", ["1", "6", "7", "27"]),
    ("to_binary(n)", ("returns the binary representation of the non-negative integer `n` as a string of 0s and 1s, "
     "with no prefix ('0' for 0)"), """
def to_binary(n):
    return bin(n)[2:]
""", ["0", "5", "8", "255"]),
    ("from_binary(s)", "returns the integer whose binary representation is the string of 0s and 1s `s`", """
def from_binary(s):
    return int(s, 2)
""", ["'0'", "'101'", "'11111111'", "'0010'"]),
    ("is_power_of_two(n)", "returns True when the integer `n` is a power of two (1, 2, 4, 8, ...), else False", """
def is_power_of_two(n):
    return n > 0 and n & (n - 1) == 0
""", ["1", "16", "18", "0", "-8"]),
    ("celsius_to_fahrenheit(c)", ("converts the temperature `c` in degrees Celsius to degrees Fahrenheit (c * 9 / 5 + "
     "32)"), """
def celsius_to_fahrenheit(c):
    return c * 9 / 5 + 32
""", ["0", "100", "-40", "37.5"]),
    ("sum_of_multiples(n)", "returns the sum of the positive integers below `n` that are multiples of 3 or of 5", """
def sum_of_multiples(n):
    return sum(i for i in range(1, n) if i % 3 == 0 or i % 5 == 0)
""", ["10", "1", "16", "1000"]),
    ("nth_prime(n)", "returns the `n`-th prime number, counting from nth_prime(1) == 2", """
def nth_prime(n):
    count, k = 0, 1
    while count < n:
        k += 1
        if all(k % d for d in range(2, int(k ** 0.5) + 1)):
            count += 1
    return k
""", ["1", "2", "6", "100"]),
    ("triangular_number(n)", "returns the `n`-th triangular number 1 + 2 + ... + n (0 for n = 0)", """
def triangular_number(n):
    return n * (n + 1) // 2
""", ["0", "1", "4", "100"]),
    ("is_leap_year(year)", ("returns True when `year` is a leap year in the Gregorian calendar (divisible by 4, except "
     "centuries not divisible by 400)"), """
def is_leap_year(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
""", ["2024", "1900", "2000", "2023"]),
    ("roman_to_int(s)", ("returns the integer value of the Roman numeral `s` (using I, V, X, L, C, D, M and the "
     "subtractive forms such as IV and CM)"), """
def roman_to_int(s):
    values = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}
    total = 0
    for i, c in enumerate(s):
        v = values[c]
        total += -v if i + 1 < len(s) and values[s[i + 1]] > v else v
    return total
""", ["'III'", "'IV'", "'LVIII'", "'MCMXCIV'"]),
    ("int_to_roman(n)", ("returns the Roman numeral for the integer 1 <= `n` <= 3999, using the subtractive forms IV, "
     "IX, XL, XC, CD and CM"), """
def int_to_roman(n):
    table = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'),
             (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]
    out = ''
    for value, numeral in table:
        while n >= value:
            out += numeral
            n -= value
    return out
""", ["3", "4", "58", "1994", "3999"]),
    ("count_primes_below(n)", "returns how many prime numbers are smaller than `n`", """
def count_primes_below(n):
    return sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, n))
""", ["10", "2", "0", "100"]),
    ("digits_of(n)", ("returns the list of the decimal digits of the non-negative integer `n`, most significant "
     "first"), """
def digits_of(n):
    return [int(c) for c in str(n)]
""", ["123", "0", "9070"]),
    ("binomial(n, k)", ("returns the binomial coefficient C(n, k), the number of ways to choose `k` items from `n` "
     "(0 when k > n)"), """
def binomial(n, k):
    if k < 0 or k > n:
        return 0
    out = 1
    for i in range(min(k, n - k)):
        out = out * (n - i) // (i + 1)
    return out
""", ["5, 2", "10, 0", "3, 5", "20, 10"]),
    ("is_perfect_number(n)", ("returns True when the positive integer `n` equals the sum of its positive divisors "
     "other than itself (for example 6 = 1 + 2 + 3)"), """
def is_perfect_number(n):
    return n == sum(d for d in range(1, n) if n % d == 0)
""", ["6", "28", "12", "1", "496"]),
    ("days_in_month(month, year)", ("returns the number of days in `month` (1-12) of `year` in the Gregorian "
     "calendar"), """
def days_in_month(month, year):
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31
""", ["1, 2023", "2, 2024", "2, 1900", "4, 2000", "12, 1999"]),
    ("sum_range(a, b)", "returns the sum of the integers from `a` to `b` inclusive (0 when a > b)", """
def sum_range(a, b):
    return sum(range(a, b + 1))
""", ["1, 10", "5, 5", "3, 1", "-2, 2"]),
    ("clamp(x, lo, hi)", ("returns `x` limited to the range [`lo`, `hi`]: `lo` when it is smaller, `hi` when it is "
     "larger"), """
def clamp(x, lo, hi):
    return max(lo, min(x, hi))
""", ["5, 0, 10", "-3, 0, 10", "15, 0, 10", "7, 7, 7"]),
    ("sign(x)", "returns -1 when the number `x` is negative, 0 when it is zero and 1 when it is positive", """
def sign(x):
    return (x > 0) - (x < 0)
""", ["-5", "0", "3", "-0.5"]),
    ("int_sqrt(n)", "returns the largest integer whose square is at most the non-negative integer `n`", """
def int_sqrt(n):
    r = 0
    while (r + 1) * (r + 1) <= n:
        r += 1
    return r
""", ["0", "15", "16", "99", "1"]),
    ("count_set_bits(n)", ("returns the number of 1 bits in the binary representation of the non-negative integer "
     "`n`"), """
def count_set_bits(n):
    return bin(n).count('1')
""", ["0", "7", "8", "255", "1023"]),
    ("seconds_to_hms(seconds)", ("formats a non-negative number of `seconds` as 'H:MM:SS' (hours not padded, minutes "
     "and seconds two digits)"), """
def seconds_to_hms(seconds):
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f'{h}:{m:02d}:{s:02d}'
""", ["0", "59", "3661", "86399", "36000"]),
    ("round_to_multiple(x, m)", ("returns the multiple of the positive integer `m` nearest to the integer `x`, "
     "rounding halfway cases up"), """
def round_to_multiple(x, m):
    return (2 * x + m) // (2 * m) * m
""", ["7, 5", "12, 5", "10, 4", "0, 3", "14, 4"]),
    ("fizzbuzz(n)", ("returns the list of strings for 1 to `n`: 'Fizz' for multiples of 3, 'Buzz' for multiples of "
     "5, 'FizzBuzz' for multiples of both, and the number itself otherwise"), """
def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        out.append('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else str(i))
    return out
""", ["5", "15", "0", "3"]),
    ("is_happy(n)", ("returns True when repeatedly replacing the positive integer `n` by the sum of the squares of its "
     "digits eventually reaches 1, and False when it loops forever"), """
def is_happy(n):
    seen = set()
    while n != 1 and n not in seen:
        seen.add(n)
        n = sum(int(c) ** 2 for c in str(n))
    return n == 1
""", ["19", "2", "1", "7", "4"]),
    ("average(nums)", "returns the arithmetic mean of the non-empty list of numbers `nums`", """
def average(nums):
    return sum(nums) / len(nums)
""", ["[1, 2, 3, 4]", "[5]", "[-1, 1]", "[2, 4, 9]"]),
    ("power(base, exp)", "returns `base` raised to the non-negative integer power `exp`", """
def power(base, exp):
    return base ** exp
""", ["2, 10", "5, 0", "-3, 3", "7, 2"]),
    ("is_even(n)", "returns True when the integer `n` is even and False when it is odd", """
def is_even(n):
    return n % 2 == 0
""", ["4", "7", "0", "-2", "-3"]),
    ("max_of_three(a, b, c)", "returns the largest of the three numbers `a`, `b` and `c`", """
def max_of_three(a, b, c):
    return max(a, b, c)
""", ["1, 2, 3", "3, 2, 1", "-1, -5, -3", "4, 4, 2"]),
    ("gcd_of_list(nums)", "returns the greatest common divisor of the non-empty list of positive integers `nums`", """
def gcd_of_list(nums):
    g = 0
    for n in nums:
        while n:
            g, n = n, g % n
    return g
""", ["[12, 18, 24]", "[7]", "[5, 10, 3]", "[100, 75, 50]"]),
    ("digit_count(n)", "returns the number of decimal digits of the integer `n`, ignoring its sign (1 for 0)", """
def digit_count(n):
    return len(str(abs(n)))
""", ["0", "12345", "-987", "1000000"]),
    ("is_palindrome_number(n)", ("returns True when the decimal digits of the non-negative integer `n` read the same "
     "backwards"), """
def is_palindrome_number(n):
    return str(n) == str(n)[::-1]
""", ["121", "123", "0", "1221", "10"]),
    ("simple_interest(principal, rate, years)", ("returns the simple interest principal * rate * years / 100 for a "
     "yearly `rate` given in percent"), """
def simple_interest(principal, rate, years):
    return principal * rate * years / 100
""", ["1000, 5, 2", "0, 10, 10", "200, 2.5, 4", "500, 0, 3"]),
    ("next_multiple(n, m)", ("returns the smallest multiple of the positive integer `m` that is greater than or equal "
     "to the integer `n`"), """
def next_multiple(n, m):
    return -(-n // m) * m
""", ["7, 5", "10, 5", "0, 3", "-4, 3", "1, 1"]),
    ("perimeter_of_rectangle(width, height)", ("returns the perimeter of a rectangle with sides `width` and "
     "`height`"), """
def perimeter_of_rectangle(width, height):
    return 2 * (width + height)
""", ["3, 4", "0, 0", "1.5, 2", "10, 1"]),
    ("hypotenuse_squared(a, b)", ("returns the square of the hypotenuse of a right triangle with legs `a` and `b` "
     "(a * a + b * b)"), """
def hypotenuse_squared(a, b):
    return a * a + b * b
""", ["3, 4", "0, 0", "5, 12", "1, 1"]),
]


def rows() -> list[dict]:
    """One row per problem, its expected values computed by the reference solution."""
    out = []
    for signature, description, solution, calls in PROBLEMS:
        name = signature.split("(")[0]
        namespace: dict = {}
        exec(textwrap.dedent(solution), namespace)  # noqa: S102 -- our own reference solutions
        tests = [f"assert {name}({args}) == {eval(f'{name}({args})', namespace)!r}" for args in calls]
        out.append({"prompt": PROMPT.format(signature=signature, description=description), "tests": tests,
                    "entry_point": name, "_solution": textwrap.dedent(solution).strip()})
    return out


def check(row: dict) -> str | None:
    """What is wrong with a row (its reference failing its tests in the sandbox), or None."""
    verdict = run_program(row["_solution"], row["tests"], timeout=10.0)
    return None if verdict.outcome == "passed" else f"{row['entry_point']}: {verdict}"


def main() -> None:
    """Build, verify and write the train and eval files."""
    all_rows = rows()
    names = [r["entry_point"] for r in all_rows]
    if len(set(names)) != len(names):
        raise SystemExit(f"duplicate function names: {sorted({n for n in names if names.count(n) > 1})}")
    for r in all_rows:
        if not 3 <= len(r["tests"]) <= 5:
            raise SystemExit(f"{r['entry_point']}: {len(r['tests'])} tests")
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(check, all_rows) if p]
    if problems:
        raise SystemExit("reference solutions fail their tests:\n" + "\n".join(problems))
    random.Random(SEED).shuffle(all_rows)
    split = {"eval": all_rows[:N_EVAL], "train": all_rows[N_EVAL:]}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for part, part_rows in split.items():
        with open(OUT_DIR / f"{part}.jsonl", "w") as f:
            for r in part_rows:
                f.write(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n")
        print(f"{part}: {len(part_rows)} problems -> {OUT_DIR / f'{part}.jsonl'}")


if __name__ == "__main__":
    main()
